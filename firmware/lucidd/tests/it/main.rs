//! All of lucidd's integration tests, in one test binary (one link, shared harness).
//! Every test runs the real thing: a real redb file in a temp dir, the real routers served
//! on loopback sockets, real HTTP from a client.

mod harness;

mod access;
mod bounds;
mod camera;
mod clock;
mod compat;
mod concurrency;
mod conformance;
mod continuous;
mod crash;
mod devlog;
mod discovery;
mod faults;
mod gateway;
mod inputs;
mod network;
mod pipeline;
mod processor;
mod recipients;
mod recorder;
mod retention;
mod settings;
mod slow_clients;
mod storage;
mod store_upgrade;
mod tidy;
mod update;
mod verify;
mod vlog;
