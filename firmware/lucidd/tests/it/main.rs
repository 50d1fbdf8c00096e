//! All of lucidd's integration tests, in one test binary (one link, shared harness).
//! Every test runs the real thing: a real redb file in a temp dir, the real routers served
//! on loopback sockets, real HTTP from a client.

mod harness;

mod camera;
mod crash;
mod faults;
mod gateway;
mod pipeline;
mod processor;
mod recorder;
mod storage;
mod tidy;
mod update;
