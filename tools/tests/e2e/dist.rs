//! The release tarball: `scripts/dist.sh` (`make dist`) packs this build's binaries, its
//! `install.sh` installs them into a temporary prefix, and three nodes started with the
//! installed systemd unit's command line (`ExecStart`, `%i` the instance) form a secure
//! cluster that serves a client and `presage-ctl`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use presage_client::{Client, ClientConfig, ClientTls, Login};

/// Stops the nodes (SIGTERM, then SIGKILL) when dropped.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        }
        for c in &mut self.0 {
            for _ in 0..100 {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} did not run: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port()
}

/// Builds the tarball from this build's binaries and installs it under `dir`; the prefix.
fn install(dir: &Path) -> (PathBuf, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the repository").to_path_buf();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_presage")).parent().expect("the binaries' folder").to_path_buf();
    let out = dir.join("out");
    let printed = run(Command::new("bash")
        .arg(repo.join("scripts/dist.sh"))
        .env("PRESAGE_BIN_DIR", &bin_dir)
        .env("DIST_DIR", &out)
        .current_dir(&repo));
    let tarball = PathBuf::from(printed.lines().last().expect("the tarball's path").trim());
    assert!(tarball.exists(), "{}", tarball.display());
    let unpack = dir.join("unpack");
    std::fs::create_dir_all(&unpack).expect("mkdir");
    run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&unpack));
    let top = std::fs::read_dir(&unpack).expect("unpacked").next().expect("one folder").expect("entry").path();
    for f in ["bin/presage", "install.sh", "share/doc/presage/LICENSE", "share/presage/monitoring/alerts.yml"] {
        assert!(top.join(f).exists(), "the tarball holds {f}");
    }
    let prefix = dir.join("prefix");
    let etc = dir.join("etc");
    run(Command::new(top.join("install.sh"))
        .arg("--prefix")
        .arg(&prefix)
        .arg("--sysconfdir")
        .arg(&etc)
        .arg("--unitdir")
        .arg(dir.join("units")));
    (prefix, etc)
}

/// The installed unit's `ExecStart` for instance `instance`, as words.
fn exec_start(unit: &Path, instance: &str) -> Vec<String> {
    let text = std::fs::read_to_string(unit).expect("the unit");
    let line = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("an ExecStart line");
    assert!(!line.contains('@'), "install.sh filled in every path: {line}");
    line.split_whitespace().map(|w| w.replace("%i", instance)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_release_tarball_installs_and_its_units_start_a_secure_three_node_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (prefix, etc) = install(dir.path());
    let presage = prefix.join("bin/presage");
    let conf = etc.join("presage");
    assert!(conf.join("node.example.toml").exists());

    // Certificates and users, made with the installed binary.
    let ca_dir = dir.path().join("ca");
    run(Command::new(&presage).args(["cert", "create-ca", "--certs-dir"]).arg(&ca_dir));
    let users = conf.join("users.toml");
    run(Command::new(&presage)
        .args(["user", "add", "app", "--role", "read-write", "--password", "app-password"])
        .arg("--users-file")
        .arg(&users));
    let printed =
        run(Command::new(&presage).args(["user", "token", "ops", "--role", "operator", "--users-file"]).arg(&users));
    let token = printed.split_whitespace().next().expect("the token").to_string();

    // Three nodes, one per region, each with its certificates and its config as the unit expects.
    let ports: Vec<[u16; 4]> = (0..3).map(|_| [free_port(), free_port(), free_port(), free_port()]).collect();
    let mut children = Vec::new();
    for i in 1..=3usize {
        let certs = dir.path().join(format!("certs-{i}"));
        std::fs::create_dir_all(&certs).expect("mkdir");
        std::fs::copy(ca_dir.join("ca.crt"), certs.join("ca.crt")).expect("CA certificate");
        run(Command::new(&presage)
            .args(["cert", "create-node", "--node-id", &i.to_string(), "--host", "127.0.0.1", "--certs-dir"])
            .arg(&certs)
            .arg("--ca-key")
            .arg(ca_dir.join("ca.key")));
        let [native, raft, resp, admin] = ports[i - 1];
        let join: Vec<String> = (1..=3).filter(|j| *j != i).map(|j| format!("127.0.0.1:{}", ports[j - 1][1])).collect();
        let config = format!(
            "node-id = {i}\nregion = \"r{i}\"\ndata-dir = {:?}\nbootstrap = {}\njoin = {join:?}\n\
             native-listen = \"127.0.0.1:{native}\"\nraft-listen = \"127.0.0.1:{raft}\"\n\
             resp-listen = \"127.0.0.1:{resp}\"\nadmin-listen = \"127.0.0.1:{admin}\"\n\
             [rocksdb]\nblock-cache-bytes = \"32MiB\"\n\
             [security]\ncerts-dir = {:?}\nusers-file = {:?}\n",
            dir.path().join(format!("data-{i}")).display().to_string(),
            i == 1,
            certs.display().to_string(),
            users.display().to_string(),
        );
        let instance = format!("node{i}");
        std::fs::write(conf.join(format!("{instance}.toml")), config).expect("config");
        let words = exec_start(&dir.path().join("units/presage@.service"), &instance);
        assert_eq!(words[0], presage.display().to_string(), "the unit runs the installed binary");
        let log = std::fs::File::create(dir.path().join(format!("{instance}.log"))).expect("log");
        let child = Command::new(&words[0])
            .args(&words[1..])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("the node starts");
        children.push(child);
    }
    let _nodes = Nodes(children);

    // The cluster serves a TLS client logged in as `app` ...
    let tls = ClientTls { ca_cert: ca_dir.join("ca.crt"), client_cert: None, client_key: None, server_name: None };
    let cfg = ClientConfig {
        tls: Some(tls),
        login: Some(Login { user: "app".into(), password: "app-password".into() }),
        ..ClientConfig::default()
    };
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{}", p[0])).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let client = loop {
        if let Ok(c) = Client::connect(&seeds, cfg.clone()).await {
            if c.put(b"installed", b"yes").await.is_ok() {
                break c;
            }
        }
        let logs: String = (1..=3)
            .map(|i| std::fs::read_to_string(dir.path().join(format!("node{i}.log"))).unwrap_or_default())
            .collect();
        assert!(tokio::time::Instant::now() < deadline, "the installed cluster did not serve in time:\n{logs}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(client.get(b"installed").await.expect("get").as_deref(), Some(b"yes".as_slice()));

    // ... and the installed presage-ctl with the operator token: three nodes.
    let ctl = prefix.join("bin/presage-ctl");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(&ctl)
            .args(["--admin", &format!("127.0.0.1:{}", ports[0][3]), "--token", &token, "--ca-cert"])
            .arg(ca_dir.join("ca.crt"))
            .args(["--json", "nodes"])
            .output()
            .expect("presage-ctl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success()
            && (1..=3).all(|i| text.contains(&format!("\"id\":{i}")) || text.contains(&format!("\"id\": {i}")))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presage-ctl nodes: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
