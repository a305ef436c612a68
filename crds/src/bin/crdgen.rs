//! Writes the CRD YAML of every kind into the directory given (default `crds/`).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crds".into()));
    for (name, yaml) in tollgate_crds::crd_files()? {
        std::fs::write(dir.join(&name), yaml)?;
        println!("wrote {}", dir.join(&name).display());
    }
    Ok(())
}
