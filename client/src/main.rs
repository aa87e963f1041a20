fn main() {
    airlock_transport::alloc::keep_freed_pages();
    std::process::exit(airlock_client::main_entry());
}
