//! `broctld`: the Main Process (control shell and one-shot commands), and, in its internal
//! mode, the Supervisor Process.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(broctld::cli::main(args));
}
