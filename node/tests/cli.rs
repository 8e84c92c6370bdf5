//! The `mim4-node` command line as an operator and governance use it.

// Helpers outside #[test] functions panic on failure too; that is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn node(args: &[&str], cwd: &Path) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_mim4-node"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    eprintln!(
        "$ mim4-node {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let output = node(args, cwd);
    assert!(output.status.success(), "mim4-node {args:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

fn fails(args: &[&str], cwd: &Path) -> String {
    let output = node(args, cwd);
    assert!(!output.status.success(), "mim4-node {args:?} should fail");
    String::from_utf8(output.stderr).unwrap()
}

/// `init` writes a 0600 key and a commented config that `config check`
/// accepts; governance builds, signs and shows a trust list naming the
/// operator; clients are added, listed and revoked.
#[test]
fn operator_and_governance_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["governance", "init", "--dir", "gov"], d);
    let gov_pub = std::fs::read_to_string(d.join("gov/governance.pub")).unwrap();
    ok(
        &[
            "init",
            "--operator",
            "fi.helsinki",
            "--dir",
            "hel",
            "--governance-key",
            gov_pub.trim(),
        ],
        d,
    );
    for key in ["hel/operator.key", "hel/storage.key", "gov/governance.key"] {
        let mode = std::fs::metadata(d.join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let config = std::fs::read_to_string(d.join("hel/node.toml")).unwrap();
    assert!(
        config.lines().filter(|l| l.starts_with('#')).count() >= 10,
        "commented"
    );
    assert!(ok(&["config", "check", "hel/node.toml"], d).contains("ok (operator fi.helsinki"));
    assert!(fails(&["init", "--operator", "fi.helsinki", "--dir", "hel"], d).contains("exists"));

    ok(
        &[
            "trust",
            "new",
            "--federation",
            "cli-test",
            "--governance-pub",
            "gov/governance.pub",
            "--draft",
            "draft.toml",
        ],
        d,
    );
    ok(
        &[
            "trust",
            "add-member",
            "--draft",
            "draft.toml",
            "--operator",
            "fi.helsinki",
            "--name",
            "City of Helsinki",
            "--country",
            "FI",
            "--role",
            "operator",
            "--key-file",
            "hel/operator.pub",
            "--grpc",
            "http://127.0.0.1:7401",
        ],
        d,
    );
    assert!(fails(
        &[
            "trust",
            "add-member",
            "--draft",
            "draft.toml",
            "--operator",
            "fi.helsinki",
            "--name",
            "again",
            "--country",
            "FI",
            "--role",
            "operator",
            "--key-file",
            "hel/operator.pub",
            "--grpc",
            "http://127.0.0.1:7401",
        ],
        d
    )
    .contains("already"));
    assert!(fails(
        &[
            "trust",
            "add-member",
            "--draft",
            "draft.toml",
            "--operator",
            "se.x",
            "--name",
            "x",
            "--country",
            "SE",
            "--role",
            "king",
            "--key-file",
            "hel/operator.pub",
            "--grpc",
            "http://x",
        ],
        d
    )
    .contains("role"));
    // A peer endpoint is https://host:port (or http:// for a plaintext development federation).
    for endpoint in [
        "127.0.0.1:7403",
        "ftp://127.0.0.1:7403",
        "https://127.0.0.1",
    ] {
        let error = fails(
            &[
                "trust",
                "add-member",
                "--draft",
                "draft.toml",
                "--operator",
                "se.y",
                "--name",
                "y",
                "--country",
                "SE",
                "--role",
                "operator",
                "--key-file",
                "hel/operator.pub",
                "--grpc",
                endpoint,
            ],
            d,
        );
        assert!(error.contains("peer endpoint"), "{endpoint}: {error}");
    }
    assert!(ok(
        &[
            "trust",
            "sign",
            "--draft",
            "draft.toml",
            "--key",
            "gov/governance.key",
            "--out",
            "v1.pb"
        ],
        d
    )
    .contains("version 1"));
    ok(
        &[
            "trust",
            "suspend",
            "--draft",
            "draft.toml",
            "--operator",
            "fi.helsinki",
        ],
        d,
    );
    assert!(ok(
        &[
            "trust",
            "sign",
            "--draft",
            "draft.toml",
            "--key",
            "gov/governance.key",
            "--out",
            "v2.pb"
        ],
        d
    )
    .contains("version 2"));
    let shown = ok(&["trust", "show", "v1.pb"], d);
    assert!(
        shown.contains("version 1") && shown.contains("signatures verify"),
        "{shown}"
    );
    assert!(
        shown.contains("fi.helsinki") && shown.contains("active"),
        "{shown}"
    );
    assert!(ok(&["trust", "show", "v2.pb"], d).contains("suspended"));

    // A trust list altered after signing is refused by `show`.
    let mut bytes = std::fs::read(d.join("v1.pb")).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    std::fs::write(d.join("forged.pb"), bytes).unwrap();
    fails(&["trust", "show", "forged.pb"], d);

    let credential = ok(
        &[
            "client",
            "add",
            "-c",
            "hel/node.toml",
            "--id",
            "edu",
            "--role",
            "service",
        ],
        d,
    );
    assert!(credential.trim().starts_with("mim4:edu:"), "{credential}");
    assert!(fails(
        &[
            "client",
            "add",
            "-c",
            "hel/node.toml",
            "--id",
            "edu",
            "--role",
            "admin"
        ],
        d
    )
    .contains("exists"));
    assert!(fails(
        &[
            "client",
            "add",
            "-c",
            "hel/node.toml",
            "--id",
            "x",
            "--role",
            "root"
        ],
        d
    )
    .contains("role"));
    ok(
        &["client", "revoke", "-c", "hel/node.toml", "--id", "edu"],
        d,
    );
    let listed = ok(&["client", "list", "-c", "hel/node.toml"], d);
    assert!(
        listed.contains("edu") && listed.contains("revoked"),
        "{listed}"
    );
    let clients = std::fs::read_to_string(d.join("hel/clients.toml")).unwrap();
    let secret = credential.trim().rsplit(':').next().unwrap();
    assert!(
        !clients.contains(secret),
        "the secret itself is never stored"
    );
}

/// `config check` names the line and key of each error and exits non-zero.
#[test]
fn config_check_names_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let check = |text: &str, needles: &[&str]| {
        std::fs::write(d.join("node.toml"), text).unwrap();
        let error = fails(&["config", "check", "node.toml"], d);
        for needle in needles {
            assert!(
                error.contains(needle),
                "{error:?} should contain {needle:?}"
            );
        }
    };
    let key = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
    let base = format!(
        "operator_id = \"fi.helsinki\"\nkey_file = \"k\"\ndata_dir = \"d\"\ntrust_list = \"t\"\n\
         governance_keys = [\"{key}\"]\n[listen]\npeer = \"127.0.0.1:1\"\napi = \"127.0.0.1:2\"\n"
    );
    check(
        &base.replace("fi.helsinki", "FI HELSINKI"),
        &["node.toml:1", "operator_id"],
    );
    check(
        &base.replace("127.0.0.1:1", "nowhere"),
        &["node.toml:7", "listen.peer"],
    );
    check(&base.replace(key, ""), &["node.toml:5", "governance_keys"]);
    check(
        &base.replace("trust_list", "trust_lisst"),
        &["node.toml:4", "unknown field"],
    );
    check(&base.replace("[listen]", "[listen"), &["node.toml:6"]);
    let missing = fails(&["config", "check", "absent.toml"], d);
    assert!(
        missing.contains("absent.toml") && missing.contains("cannot read"),
        "{missing}"
    );
}

/// `run` refuses to start with a clear message when the operator is not in
/// the trust list or the key file is readable by others.
#[test]
fn run_refuses_an_operator_outside_the_trust_list() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["governance", "init", "--dir", "gov"], d);
    let gov_pub = std::fs::read_to_string(d.join("gov/governance.pub")).unwrap();
    ok(
        &[
            "init",
            "--operator",
            "fi.helsinki",
            "--dir",
            "hel",
            "--peer-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--governance-key",
            gov_pub.trim(),
        ],
        d,
    );
    ok(
        &[
            "init",
            "--operator",
            "se.stockholm",
            "--dir",
            "sto",
            "--governance-key",
            gov_pub.trim(),
        ],
        d,
    );
    ok(
        &[
            "trust",
            "new",
            "--federation",
            "f",
            "--governance-pub",
            "gov/governance.pub",
            "--draft",
            "draft.toml",
        ],
        d,
    );
    ok(
        &[
            "trust",
            "add-member",
            "--draft",
            "draft.toml",
            "--operator",
            "se.stockholm",
            "--name",
            "S",
            "--country",
            "SE",
            "--role",
            "operator",
            "--key-file",
            "sto/operator.pub",
            "--grpc",
            "http://127.0.0.1:1",
        ],
        d,
    );
    ok(
        &[
            "trust",
            "sign",
            "--draft",
            "draft.toml",
            "--key",
            "gov/governance.key",
            "--out",
            "hel/trust-list.pb",
        ],
        d,
    );
    let error = fails(&["run", "--config", "hel/node.toml"], d);
    assert!(
        error.contains("fi.helsinki is not in trust list version 1"),
        "{error}"
    );

    std::fs::set_permissions(
        d.join("hel/operator.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let error = fails(&["run", "--config", "hel/node.toml"], d);
    assert!(error.contains("chmod 600"), "{error}");
}

/// Governance publishes the attribute catalogue and the service registry with
/// the trust list; invalid entries are refused before they reach the draft.
#[test]
fn catalogue_and_service_registry_are_published_with_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["governance", "init", "--dir", "gov"], d);
    ok(
        &[
            "trust",
            "new",
            "--federation",
            "f",
            "--governance-pub",
            "gov/governance.pub",
            "--draft",
            "draft.toml",
        ],
        d,
    );
    ok(
        &[
            "trust",
            "add-attribute",
            "--draft",
            "draft.toml",
            "--name",
            "income.gross_monthly",
            "--type",
            "integer",
            "--unit",
            "EUR/month",
            "--source",
            "fi.incomeregister",
        ],
        d,
    );
    assert!(fails(
        &[
            "trust",
            "add-attribute",
            "--draft",
            "draft.toml",
            "--name",
            "income.gross_monthly",
            "--type",
            "integer",
            "--source",
            "fi.incomeregister"
        ],
        d
    )
    .contains("already"));
    assert!(fails(
        &[
            "trust",
            "add-attribute",
            "--draft",
            "draft.toml",
            "--name",
            "Bad Name",
            "--type",
            "integer",
            "--source",
            "fi.incomeregister"
        ],
        d
    )
    .contains("attribute"));
    assert!(fails(
        &[
            "trust",
            "add-attribute",
            "--draft",
            "draft.toml",
            "--name",
            "x.y",
            "--type",
            "colour",
            "--source",
            "fi.incomeregister"
        ],
        d
    )
    .contains("type"));
    ok(
        &[
            "trust",
            "add-service",
            "--draft",
            "draft.toml",
            "--service",
            "fi.helsinki/early-education",
            "--name",
            "Early education",
            "--purpose",
            "dpv:ServiceProvision",
        ],
        d,
    );
    assert!(fails(
        &[
            "trust",
            "add-service",
            "--draft",
            "draft.toml",
            "--service",
            "no-slash",
            "--name",
            "x",
            "--purpose",
            "dpv:ServiceProvision"
        ],
        d
    )
    .contains("service id"));
    ok(
        &[
            "trust",
            "sign",
            "--draft",
            "draft.toml",
            "--key",
            "gov/governance.key",
            "--out",
            "v1.pb",
        ],
        d,
    );
    let shown = ok(&["trust", "show", "v1.pb"], d);
    assert!(
        shown.contains("income.gross_monthly") && shown.contains("integer"),
        "{shown}"
    );
    assert!(
        shown.contains("fi.helsinki/early-education") && shown.contains("dpv:ServiceProvision"),
        "{shown}"
    );
}

/// `trust add-member` and `trust add-key` refuse a small-order (weak) public
/// key, whose signatures anyone could forge, and leave the draft unchanged.
#[test]
fn trust_refuses_small_order_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["governance", "init", "--dir", "gov"], d);
    ok(&["governance", "init", "--dir", "op"], d);
    ok(
        &[
            "trust",
            "new",
            "--federation",
            "weak-test",
            "--governance-pub",
            "gov/governance.pub",
            "--draft",
            "draft.toml",
        ],
        d,
    );
    let add_member = |key_file: &str| {
        [
            "trust",
            "add-member",
            "--draft",
            "draft.toml",
            "--operator",
            "fi.helsinki",
            "--name",
            "City of Helsinki",
            "--country",
            "FI",
            "--role",
            "operator",
            "--key-file",
            key_file,
            "--grpc",
            "http://127.0.0.1:7401",
        ]
        .map(str::to_owned)
    };
    // The identity (order 1) and a point of order 8, as 64 hex digits.
    for (i, weak) in [
        "0100000000000000000000000000000000000000000000000000000000000000",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    ]
    .iter()
    .enumerate()
    {
        let file = format!("weak{i}.pub");
        std::fs::write(d.join(&file), format!("{weak}\n")).unwrap();
        let before = std::fs::read_to_string(d.join("draft.toml")).unwrap();
        let args = add_member(&file);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let error = fails(&args, d);
        assert!(error.contains("weak (small order)"), "{error}");
        assert!(error.contains(&file), "names the file: {error}");
        assert_eq!(
            std::fs::read_to_string(d.join("draft.toml")).unwrap(),
            before
        );
    }
    let args = add_member("op/governance.pub");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&args, d);
    let before = std::fs::read_to_string(d.join("draft.toml")).unwrap();
    let error = fails(
        &[
            "trust",
            "add-key",
            "--draft",
            "draft.toml",
            "--operator",
            "fi.helsinki",
            "--key-file",
            "weak1.pub",
        ],
        d,
    );
    assert!(error.contains("weak (small order)"), "{error}");
    assert_eq!(
        std::fs::read_to_string(d.join("draft.toml")).unwrap(),
        before
    );
}

/// An operator that offers only libp2p: `init --p2p-listen` writes the
/// listener and prints the PeerId derived from the new key; governance adds
/// it with `--p2p` alone (the PeerId suffix is appended), refuses a member
/// with no way to reach it or an address pinned to another PeerId, and
/// `trust show` lists the PeerId and the address.
#[test]
fn a_libp2p_only_member() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&["governance", "init", "--dir", "gov"], d);
    let gov_pub = std::fs::read_to_string(d.join("gov/governance.pub")).unwrap();
    let out = ok(
        &[
            "init",
            "--operator",
            "se.stockholm",
            "--dir",
            "sto",
            "--governance-key",
            gov_pub.trim(),
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/7403",
            "--p2p-listen",
            "/ip4/127.0.0.1/udp/7403/quic-v1",
        ],
        d,
    );
    let peer_id = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("libp2p PeerId: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no PeerId in {out}"))
        .to_owned();
    assert!(peer_id.starts_with("12D3KooW"), "{peer_id}");
    let checked = ok(&["config", "check", "sto/node.toml"], d);
    assert!(
        checked.contains("libp2p: /ip4/127.0.0.1/tcp/7403, /ip4/127.0.0.1/udp/7403/quic-v1"),
        "{checked}"
    );
    assert!(fails(
        &[
            "init",
            "--operator",
            "x.y",
            "--dir",
            "bad",
            "--p2p-listen",
            "tcp/7403"
        ],
        d
    )
    .contains("p2p-listen"));
    ok(
        &[
            "trust",
            "new",
            "--federation",
            "f",
            "--governance-pub",
            "gov/governance.pub",
            "--draft",
            "draft.toml",
        ],
        d,
    );
    let member = |extra: &[&str]| {
        let mut args = vec![
            "trust",
            "add-member",
            "--draft",
            "draft.toml",
            "--operator",
            "se.stockholm",
            "--name",
            "Stockholm",
            "--country",
            "SE",
            "--role",
            "operator",
            "--key-file",
            "sto/operator.pub",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| node(&args.iter().map(String::as_str).collect::<Vec<_>>(), d);
    let neither = run(member(&[]));
    assert!(!neither.status.success());
    assert!(String::from_utf8_lossy(&neither.stderr).contains("--grpc, --p2p or both"));
    let other = "/ip4/127.0.0.1/tcp/7403/p2p/12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB";
    let pinned = run(member(&["--p2p", other]));
    assert!(!pinned.status.success());
    assert!(
        String::from_utf8_lossy(&pinned.stderr)
            .contains("not derived from any of the member's keys"),
        "{}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    assert!(run(member(&["--p2p", "/ip4/127.0.0.1/tcp/7403"]))
        .status
        .success());
    ok(
        &[
            "trust",
            "sign",
            "--draft",
            "draft.toml",
            "--key",
            "gov/governance.key",
            "--out",
            "v1.pb",
        ],
        d,
    );
    let shown = ok(&["trust", "show", "v1.pb"], d);
    assert!(
        shown.contains(&format!("libp2p PeerId {peer_id}")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("libp2p /ip4/127.0.0.1/tcp/7403/p2p/{peer_id}")),
        "{shown}"
    );
}

/// No secret ever reaches what an operator sees or ships to a log system:
/// the hex of the operator key, the storage key and the governance key is in
/// no output of `init`, `config check`, `trust`, `client` and a running node
/// logging at `trace` (every crate's logs, TLS and libp2p included), in hex
/// or base64.
#[test]
fn secret_keys_never_reach_output_or_logs() {
    use base64::Engine as _;
    use std::io::Read as _;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut seen = String::new();
    let mut run = |args: &[&str]| seen.push_str(&ok(args, d));
    run(&["governance", "init", "--dir", "gov"]);
    let gov_pub = std::fs::read_to_string(d.join("gov/governance.pub")).unwrap();
    run(&[
        "init",
        "--operator",
        "fi.helsinki",
        "--dir",
        "hel",
        "--peer-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
        "--governance-key",
        gov_pub.trim(),
    ]);
    run(&["config", "check", "hel/node.toml"]);
    run(&[
        "trust",
        "new",
        "--federation",
        "f",
        "--governance-pub",
        "gov/governance.pub",
        "--draft",
        "draft.toml",
    ]);
    run(&[
        "trust",
        "add-member",
        "--draft",
        "draft.toml",
        "--operator",
        "fi.helsinki",
        "--name",
        "H",
        "--country",
        "FI",
        "--role",
        "operator",
        "--key-file",
        "hel/operator.pub",
        "--grpc",
        "https://127.0.0.1:1",
    ]);
    run(&[
        "trust",
        "sign",
        "--draft",
        "draft.toml",
        "--key",
        "gov/governance.key",
        "--out",
        "hel/trust-list.pb",
    ]);
    run(&["trust", "show", "hel/trust-list.pb"]);
    run(&[
        "client",
        "add",
        "-c",
        "hel/node.toml",
        "--id",
        "edu",
        "--role",
        "service",
    ]);

    // The node itself, logging everything until it has started and a moment more.
    let log = d.join("node.log");
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_mim4-node"))
            .args(["run", "--config", "hel/node.toml"])
            .current_dir(d)
            .env("RUST_LOG", "trace")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(d.join("node.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let read_all = || {
        let mut text = String::new();
        for file in ["node.log", "node.err"] {
            let mut bytes = Vec::new();
            std::fs::File::open(d.join(file))
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
        text
    };
    while !read_all().contains("node started") {
        assert!(
            std::time::Instant::now() < deadline,
            "the node did not start within 60 s:\n{}",
            read_all()
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the node exited:\n{}",
            read_all()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let logged = read_all();
    assert!(logged.lines().count() > 20, "trace logging is on: {logged}");
    eprintln!(
        "node log: {} lines, {} at TRACE",
        logged.lines().count(),
        logged.matches("TRACE").count()
    );
    seen.push_str(&logged);

    for file in ["hel/operator.key", "hel/storage.key", "gov/governance.key"] {
        let text = std::fs::read_to_string(d.join(file)).unwrap();
        let secret = text
            .split(|c: char| !c.is_ascii_hexdigit())
            .find(|word| word.len() == 64)
            .unwrap_or_else(|| panic!("no 32-byte hex secret in {file}"));
        let bytes = hex::decode(secret).unwrap();
        for shown in [
            secret.to_ascii_lowercase(),
            secret.to_ascii_uppercase(),
            base64::engine::general_purpose::STANDARD.encode(&bytes),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes),
        ] {
            assert!(
                !seen.contains(&shown),
                "{file}: its secret is in the output"
            );
        }
        // Control: the scan does find what is there (the public keys).
        assert!(seen.contains("fi.helsinki"));
    }
}

/// A node process that is killed (SIGKILL) and reaped when dropped, so that a
/// failed assertion while it runs does not leave it behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
