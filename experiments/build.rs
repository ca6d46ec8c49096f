//! Names the commit the binary is built from, for `psmr --version`.

use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=PSMR_COMMIT={commit}");
    // A new commit moves HEAD or the branch it points to (a loose ref, or
    // one packed into packed-refs). Only existing paths are watched: cargo
    // reruns a script whose watched path is missing on every build, which
    // relinked the binary each time.
    let watch = |path: String| {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    };
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        watch(format!("{dir}/HEAD"));
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(format!("{dir}/{branch}"));
        }
        watch(format!("{dir}/packed-refs"));
        // A branch packed at the last build is loose again after a commit.
        watch(format!("{dir}/refs/heads"));
    }
}
