"""The independent side of tests/it/discovery.rs: python-zeroconf, not our code.

Runs inside a network namespace of its own (the test starts it with `unshare -rn`):
starts lucidd, browses for `_lucid._tcp` and `_http._tcp`, resolves both, reads
GET /api/v1/device to compare, stops lucidd with SIGTERM and waits for the goodbye
(`remove_service`). Prints one JSON object; the Rust test makes the assertions.
"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

TYPES = ["_lucid._tcp.local.", "_http._tcp.local."]


class Listener(ServiceListener):
    def __init__(self):
        self.added = {}
        self.removed = set()

    def add_service(self, zc, type_, name):
        self.added.setdefault(type_, name)

    def update_service(self, zc, type_, name):
        pass

    def remove_service(self, zc, type_, name):
        self.removed.add(type_)


def wait(cond, secs):
    end = time.time() + secs
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def main():
    lucidd, data_dir, log = sys.argv[1], sys.argv[2], sys.argv[3]
    env = dict(os.environ, LUCID_API_TOKEN="discovery-test")
    with open(log, "wb") as out:
        daemon = subprocess.Popen([lucidd, "run", "--data-dir", data_dir], env=env, stdout=out, stderr=out)
    result = {}
    try:
        device = None
        for _ in range(150):
            try:
                with urllib.request.urlopen("http://127.0.0.1:8087/api/v1/device", timeout=2) as r:
                    device = json.load(r)
                break
            except OSError:
                time.sleep(0.2)
        result["device"] = device
        zc = Zeroconf()
        listener = Listener()
        ServiceBrowser(zc, TYPES, listener)
        wait(lambda: len(listener.added) == len(TYPES), 20)
        services = {}
        for type_, name in listener.added.items():
            # Generous: the suite runs this beside a hundred other tests on two cores, and
            # the answer is a multicast round trip through the daemon's responder thread.
            info = zc.get_service_info(type_, name, timeout=5000) or zc.get_service_info(type_, name, timeout=15000)
            if info is None:
                services[type_] = {"name": name, "resolved": False}
                continue
            services[type_] = {
                "name": name,
                "resolved": True,
                "server": info.server,
                "port": info.port,
                "addresses": info.parsed_addresses(),
                "txt": {k.decode(): (v.decode() if v is not None else None) for k, v in info.properties.items()},
            }
        result["services"] = services
        daemon.send_signal(signal.SIGTERM)
        result["exit"] = daemon.wait(timeout=30)
        result["goodbye"] = sorted(listener.removed) if wait(lambda: len(listener.removed) == len(TYPES), 10) else sorted(listener.removed)
        zc.close()
    finally:
        if daemon.poll() is None:
            daemon.kill()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
