//! A real NTP server for tests: chrony's `chronyd` (installed by scripts/setup) serving
//! this host's own clock (`local stratum 8`) on 127.0.0.1:`port`, without ever setting
//! the host's clock (`-x`). Killed on drop. Shared by lucidd's integration tests
//! (tests/it/clock.rs) and the QEMU boot group (hil-tests/tests/boot.rs, which includes
//! this file by path), so both test against the same server setup.

use std::path::Path;
use std::process::{Child, Command};

pub struct Chrony(Child);

impl Chrony {
    /// Starts chronyd with its config, pid, drift file and log (`chronyd.log`) in `dir`.
    pub fn start(dir: &Path, port: u16) -> Chrony {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n\
                 pidfile {d}/chronyd.pid\ndriftfile {d}/chrony.drift\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("chronyd.log")).unwrap();
        let child = Command::new("chronyd")
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("chronyd runs (scripts/setup installs chrony)");
        Chrony(child)
    }
}

impl Drop for Chrony {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
