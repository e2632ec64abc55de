//! What the binary costs in memory before it serves a request. Idle RSS is
//! measured by `cargo bench --bench overhead -- startup`, not here; this
//! guards the one part of it that a build setting decides.

use std::process::Command;

/// The binary's relative relocations are packed (`DT_RELR`, build.rs):
/// without that the loader reads about 1 MB of `.rela.dyn` at start, and it
/// stays resident for the life of the process.
#[test]
fn the_binary_packs_its_relative_relocations() {
    let output = Command::new("readelf")
        .args(["--dynamic", "--wide", env!("CARGO_BIN_EXE_ortserve")])
        .output()
        .expect("run readelf (binutils, which the linker comes with)");
    assert!(output.status.success(), "readelf failed: {output:?}");
    let dynamic = String::from_utf8_lossy(&output.stdout);
    assert!(
        dynamic.contains("(RELR)"),
        "no DT_RELR in the binary's dynamic section: is `-z pack-relative-relocs` still passed \
         to the linker?\n{dynamic}"
    );
}
