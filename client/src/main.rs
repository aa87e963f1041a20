fn main() {
    std::process::exit(airlock_client::main_entry());
}
