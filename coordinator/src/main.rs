fn main() {
    cni::plugin::run(
        &coordinator::plugin::Coordinator,
        &cni::plugin::About {
            name: "coordinator",
            version: env!("CARGO_PKG_VERSION"),
        },
    )
}
