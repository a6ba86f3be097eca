fn main() {
    eprintln!("oxcd-jepsen: not built yet");
    std::process::exit(2);
}
