//! Writes the CRD YAML of every kind into the directory given (default `crds/`); with
//! `--json`, prints the same CRDs as one JSON array instead (for the check that YAML 1.1
//! readers see the schema the YAML was made from).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "crds".into());
    if arg == "--json" {
        let crds = tollgate_crds::all_crds();
        println!("{}", serde_json::to_string(&crds)?);
        return Ok(());
    }
    let dir = PathBuf::from(arg);
    for (name, yaml) in tollgate_crds::crd_files()? {
        std::fs::write(dir.join(&name), yaml)?;
        println!("wrote {}", dir.join(&name).display());
    }
    Ok(())
}
