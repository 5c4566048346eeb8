fn main() -> std::process::ExitCode {
    textok_studio::cli::main()
}
