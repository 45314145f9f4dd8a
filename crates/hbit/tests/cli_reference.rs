//! docs/cli.md is what `hbit cli-reference` writes now: a flag added, renamed or re-documented
//! without regenerating the file fails here.

use std::process::Command;

#[test]
fn docs_cli_md_is_current() {
    let out = Command::new(env!("CARGO_BIN_EXE_hbit"))
        .arg("cli-reference")
        .output()
        .expect("running hbit cli-reference");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        generated == committed,
        "docs/cli.md is stale: run `cargo run --release -- cli-reference --out docs/cli.md`"
    );
    // Every subcommand has its section.
    for sub in ["serve", "chat", "bench serve", "generate", "train", "pack"] {
        assert!(
            generated.contains(&format!("## `hbit {sub}`")),
            "no section for {sub}"
        );
    }
}
