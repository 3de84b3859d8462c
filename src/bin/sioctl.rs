//! `sioctl`: the operator's tool (PM2's verbs on top of systemd).

use clap::{Parser, Subcommand};
use sio::control::{Request, Response, Status};
use sio::wire::{self, Role, ToAgent, ToMaster, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "sioctl", version, about = "Operate sio apps")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Workers, their state and sessions.
    Status {
        app: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// One request to an app's master over its bus.
fn ask(app: &str, request: &Request) -> Result<Response, String> {
    let name = wire::bus_address(app);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string())?;
    let mut s = UnixStream::connect_addr(&addr)
        .map_err(|e| format!("no master of {app:?} is running (bus @{name}: {e})"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    ToMaster::Hello {
        version: PROTOCOL_VERSION,
        role: Role::Control,
    }
    .encode(&mut out);
    ToMaster::Control(serde_json::to_vec(request).expect("requests serialize")).encode(&mut out);
    s.write_all(&out).map_err(|e| format!("bus: {e}"))?;
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)
            .map_err(|e| format!("the master hung up: {e}"))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > wire::MAX_FRAME {
            return Err("oversized answer".into());
        }
        let mut body = vec![0; len];
        s.read_exact(&mut body).map_err(|e| format!("bus: {e}"))?;
        match ToAgent::decode(&body).map_err(|e| e.to_string())? {
            ToAgent::Welcome { .. } => continue,
            ToAgent::Refused(why) => return Err(format!("the master refused: {why}")),
            ToAgent::ControlReply(json) => {
                return serde_json::from_slice(&json).map_err(|e| format!("bad answer: {e}"))
            }
            _ => return Err("unexpected answer".into()),
        }
    }
}

fn print_status(s: &Status) {
    println!("{}: {}", s.app, s.summary());
    let listen: Vec<String> = s.listen.iter().map(|a| a.to_string()).collect();
    println!(
        "master pid {}, listening on {}{}",
        s.pid,
        listen.join(", "),
        if s.activated {
            " (socket-activated)"
        } else {
            ""
        }
    );
    println!(
        "{:<6} {:<10} {:>8} {:>9}",
        "SLOT", "STATE", "PID", "SESSIONS"
    );
    for w in &s.workers {
        let pid = w.pid.map_or("-".to_owned(), |p| p.to_string());
        println!("{:<6} {:<10} {:>8} {:>9}", w.slot, w.state, pid, w.sessions);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Status { app, json } => match ask(&app, &Request::Status) {
            Ok(Response::Status(s)) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&s).expect("status serializes")
                    );
                } else {
                    print_status(&s);
                }
                ExitCode::SUCCESS
            }
            Ok(Response::Error(e)) => {
                eprintln!("sioctl: {e}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("sioctl: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
