//! Regenerates the prost/tonic code under `proto/src/gen/` from the `.proto` files, with a
//! pure-Rust protobuf compiler (protox), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "proto".into()));
    let include = root.join("proto");
    let files = [
        include.join("tollgate/v1alpha1/config.proto"),
        include.join("tollgate/v1alpha1/usage.proto"),
    ];
    let fds = protox::compile(&files, [&include])?;
    let out = root.join("src/gen");
    std::fs::create_dir_all(&out)?;
    tonic_prost_build::configure()
        .btree_map(".")
        // These carry secrets; their Debug is written by hand and redacts them.
        .skip_debug([
            ".tollgate.v1alpha1.Credential",
            ".tollgate.v1alpha1.McpServer",
            ".tollgate.v1alpha1.OAuthClient",
            ".tollgate.v1alpha1.DeltaConfigResponse",
        ])
        .build_server(true)
        .build_client(true)
        .emit_rerun_if_changed(false)
        .out_dir(&out)
        .compile_fds(fds)?;
    println!("wrote {}", out.display());
    Ok(())
}
