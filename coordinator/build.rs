//! Compiles `proto/raft.proto` (the coordinators' Raft RPCs) with protox (pure Rust), as `splade-proto` compiles
//! the worker API; it lives here because only coordinators speak it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/raft.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
