use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Context, Result};
use lcm::dist::launcher::{self, LaunchSpec};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  lcm launch --nproc-per-node 8 -- pretrain --config configs/drt-128m.json
  lcm launch --nproc-per-node 2 -- pretrain --config configs/drt-tiny.json --set device=cpu
  lcm launch --nproc-per-node 8 -- eval niah --checkpoint models/drt-niah-c8 --len 4K,1M,16M
  # two nodes: run on each, with its own --node-rank
  lcm launch --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr node0 --master-port 29500 \\
      -- pretrain --config configs/drt-128m.json

Each worker is `lcm ARGS...` with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR
and MASTER_PORT set, as torchrun sets them (so `torchrun --no-python lcm pretrain ...` works
too); a worker on a GPU machine binds cuda:LOCAL_RANK. If a worker fails, the others are
stopped and the launcher exits non-zero naming the rank. Ctrl-C (or SIGTERM) goes to every
worker: training saves a checkpoint and stops; a second Ctrl-C quits at once.")]
pub struct Args {
    /// Workers to start on this node (one per GPU).
    #[arg(long, default_value_t = 1)]
    nproc_per_node: u64,
    /// Nodes in the job (run `lcm launch` once on each).
    #[arg(long, default_value_t = 1)]
    nnodes: u64,
    /// This node's index, 0 .. nnodes-1 (node 0 hosts the rendezvous).
    #[arg(long, default_value_t = 0)]
    node_rank: u64,
    /// Address of node 0, where rank 0 serves the rendezvous.
    #[arg(long, default_value = "127.0.0.1")]
    master_addr: String,
    /// Port of the rendezvous on node 0; 0 picks a free one (one node only).
    #[arg(long, default_value_t = 29500)]
    master_port: u16,
    /// Seconds the other workers get to exit after one fails, before SIGKILL.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// The lcm command each worker runs (after `--`).
    #[arg(last = true, required = true, num_args = 1..)]
    command: Vec<OsString>,
}

pub fn run(args: Args) -> Result<i32> {
    let spec = LaunchSpec {
        nproc_per_node: args.nproc_per_node,
        nnodes: args.nnodes,
        node_rank: args.node_rank,
        master_addr: args.master_addr,
        master_port: args.master_port,
        grace: Duration::from_secs_f64(args.grace.max(0.0)),
        program: std::env::current_exe().context("finding the lcm binary to start workers")?,
        args: args.command,
    };
    Ok(launcher::run(&spec)?)
}
