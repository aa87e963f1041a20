//! Builds the browser console (client/web) with npm when Node is present and
//! embeds its output. Without Node, or when the npm build fails, the gateway
//! still builds and serves a page saying the console was not built.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLACEHOLDER: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Airlock console</title></head>\n<body><h1>Airlock console not built</h1>\n<p>This gateway was compiled without Node.js/npm, so the browser console was not built. Install Node.js 18+ and npm, then rebuild the gateway (<code>cargo build -p airlock-gateway</code>).</p></body></html>\n";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let web = manifest.join("../client/web");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("console");
    for p in ["src", "package.json", "package-lock.json", "build.mjs"] {
        println!("cargo:rerun-if-changed={}", web.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=AIRLOCK_SKIP_CONSOLE_BUILD");
    println!("cargo:rerun-if-env-changed=NPM");

    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("create console output dir");
    let built = if std::env::var_os("AIRLOCK_SKIP_CONSOLE_BUILD").is_some() {
        println!(
            "cargo:warning=AIRLOCK_SKIP_CONSOLE_BUILD is set: the browser console is not built"
        );
        false
    } else {
        match build_console(&web, &out) {
            Ok(()) => true,
            Err(e) => {
                println!("cargo:warning=browser console not built: {e}");
                false
            }
        }
    };
    if !built {
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out).expect("create console output dir");
        std::fs::write(out.join("index.html"), PLACEHOLDER).expect("write placeholder");
    }
    write_manifest(&out, built);
}

fn npm() -> Option<String> {
    let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
    let ok = Command::new(&npm)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(npm)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let o = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if o.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&o.stderr);
    let tail: Vec<&str> = err.lines().rev().take(8).collect();
    Err(format!(
        "{shown} failed ({}): {}",
        o.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn build_console(web: &Path, out: &Path) -> Result<(), String> {
    let npm = npm().ok_or("npm was not found on PATH (install Node.js and npm)")?;
    // `npm ci` only when node_modules is missing or older than the lockfile:
    // it wipes node_modules, which is slow to redo on every build.
    let installed = mtime(&web.join("node_modules/.package-lock.json"));
    let lock = mtime(&web.join("package-lock.json"));
    if installed.is_none() || lock > installed {
        run(Command::new(&npm)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(web))?;
    }
    run(Command::new(&npm)
        .args(["run", "--silent", "build"])
        .env("AIRLOCK_CONSOLE_OUT", out)
        .current_dir(web))?;
    if !out.join("index.html").is_file() || !out.join("app.js").is_file() {
        return Err("npm run build produced no index.html/app.js".into());
    }
    Ok(())
}

fn write_manifest(out: &Path, built: bool) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("read console output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut src = String::new();
    let _ = writeln!(
        src,
        "/// Whether the real console was built (false: placeholder page)."
    );
    let _ = writeln!(src, "pub const BUILT: bool = {built};");
    let _ = writeln!(src, "/// Embedded console files: (name, bytes).");
    let _ = writeln!(src, "pub static ASSETS: &[(&str, &[u8])] = &[");
    for f in files {
        let name = f
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 asset name");
        let _ = writeln!(
            src,
            "    ({name:?}, include_bytes!({:?})),",
            f.display().to_string()
        );
    }
    let _ = writeln!(src, "];");
    std::fs::write(
        out.parent().expect("OUT_DIR").join("console_assets.rs"),
        src,
    )
    .expect("write console_assets.rs");
}
