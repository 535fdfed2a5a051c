//! `orcaseed`: seeds an S3 bucket or an Azure container with test data, lists it and deletes
//! it. Everything lives in the library's `seed` module (docs/orcaseed.md).

fn main() -> std::process::ExitCode {
    orca::seed::main()
}
