use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// Print as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let info = lcm::info::Info::gather();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        println!("{info}");
    }
    Ok(())
}
