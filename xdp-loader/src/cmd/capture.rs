//! `capture`: ask a running service, through its control socket, to capture to a pcap file.
use std::path::PathBuf;

use crate::CliError;

pub(crate) fn capture(
    iface: &str,
    queue: u32,
    file: Option<PathBuf>,
    count: u64,
    snaplen: u32,
    stop: bool,
) -> Result<(), CliError> {
    let sock = xsk_stack::control::socket_path(iface, queue);
    if !sock.exists() {
        return Err(CliError::Usage(format!(
            "no service runs on {iface} queue {queue} (no control socket at {})",
            sock.display()
        )));
    }
    let req = if stop {
        serde_json::json!({"cmd": "capture_stop"})
    } else {
        let file = file.ok_or_else(|| CliError::Usage("-w FILE is required".into()))?;
        let path = std::path::absolute(&file)
            .map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
        serde_json::json!({"cmd": "capture", "path": path, "count": count, "snaplen": snaplen})
    };
    let reply = xsk_stack::control::request(&sock, &req)
        .map_err(|e| CliError::Usage(format!("asking the service at {}: {e}", sock.display())))?;
    if reply["ok"] != true {
        return Err(CliError::Usage(format!(
            "the service refused: {}",
            reply["error"].as_str().unwrap_or("?")
        )));
    }
    if stop {
        println!(
            "{}",
            if reply["stopped"] == true {
                "capture stopped"
            } else {
                "no capture was running"
            }
        );
    } else {
        println!(
            "capturing up to {count} frames on {iface} queue {queue} to {}",
            req["path"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}
