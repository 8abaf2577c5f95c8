fn main() {
    std::process::exit(tunnelfleet::cli::main());
}
