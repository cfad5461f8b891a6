//! `attach` and `detach`: load and attach the program, or remove it and its pins.
use std::path::Path;

use steer_bpf::{AttachOptions, Steering, XdpMode};

use crate::{
    cli::{rules_of, AttachArgs, ModeArg},
    CliError,
};

pub(crate) fn attach(a: AttachArgs, root: Option<&Path>) -> Result<(), CliError> {
    let rules = rules_of(&a.tcp, &a.udp, a.ip).map_err(CliError::Usage)?;
    if rules.is_empty() && a.ip.is_some() {
        return Err(CliError::Usage(
            "--ip needs at least one --tcp or --udp port".into(),
        ));
    }
    let opts = AttachOptions {
        iface: a.iface,
        queue: a.queue,
        mode: match a.mode {
            ModeArg::Auto => None,
            ModeArg::Native => Some(XdpMode::Native),
            ModeArg::Generic => Some(XdpMode::Generic),
        },
        rules: rules.clone(),
        force: a.force,
        pin_root: root.map(Path::to_path_buf),
    };
    let r = Steering::attach(&opts)?;
    if let Some(e) = &r.native_error {
        println!(
            "native mode unavailable on {} ({e}); using generic",
            r.iface
        );
    }
    if let Some(id) = r.replaced_foreign {
        println!("replaced foreign XDP program id {id}");
    }
    let rules: Vec<String> = rules.iter().map(ToString::to_string).collect();
    println!(
        "{} {} queue {} mode {} prog id {} rules [{}] pins {}",
        if r.reused_maps {
            "re-attached"
        } else {
            "attached"
        },
        r.iface,
        r.queue,
        r.mode,
        r.prog_id,
        rules.join(", "),
        r.pin_dir.display()
    );
    Ok(())
}

pub(crate) fn detach(iface: &str, root: Option<&Path>, force: bool) -> Result<(), CliError> {
    Steering::detach(iface, root, force)?;
    println!("detached {iface}");
    Ok(())
}
