//! Man pages and shell completions, generated from the command-line
//! definitions ([`crate::cli`]) and the config reference
//! ([`crate::config::FIELDS`]): `sio docs DIR`, run when packaging, so that
//! the units' `Documentation=man:sio(1)` resolves and `sioctl <TAB>` works.

use crate::cli::{Cli, CtlCli};
use crate::config::FIELDS;
use clap::CommandFactory;
use clap_complete::Shell;
use std::fs;
use std::io;
use std::path::Path;

/// Writes `man/sio.1`, `man/sioctl.1` (and a page per subcommand, e.g.
/// `sioctl-status.1`), `man5/sio.json.5` and
/// `completions/{sio,sioctl}.{bash,fish}`, `completions/_{sio,sioctl}` (zsh).
pub fn write_all(dir: &Path) -> io::Result<()> {
    let (man1, man5, completions) = (dir.join("man"), dir.join("man5"), dir.join("completions"));
    for d in [&man1, &man5, &completions] {
        fs::create_dir_all(d)?;
    }
    for (name, command) in [("sio", Cli::command()), ("sioctl", CtlCli::command())] {
        write_pages(command.clone(), &man1)?;
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), name, &mut script);
            fs::write(completions.join(file), script)?;
        }
    }
    fs::write(man5.join("sio.json.5"), config_page())
}

/// The page of `command` and one per visible subcommand (`sioctl-status.1`:
/// the SUBCOMMANDS section names them), each with the SEE ALSO section.
/// Like `clap_mangen::generate_to`, which has no way to add a section.
fn write_pages(command: clap::Command, dir: &Path) -> io::Result<()> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    write_page(command, dir)
}

fn write_page(command: clap::Command, dir: &Path) -> io::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub.clone(), dir)?;
    }
    let man = clap_mangen::Man::new(command);
    let mut page = Vec::new();
    man.render(&mut page)?;
    page.extend_from_slice(SEE_ALSO.as_bytes());
    fs::write(dir.join(man.get_filename()), page)
}

const SEE_ALSO: &str = ".SH \"SEE ALSO\"\n\\fBsio\\fR(1), \\fBsioctl\\fR(1), \\fBsio.json\\fR(5), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)\n";

/// Text for roff: backslashes and hyphens escaped, Markdown's backticks as bold.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('-', "\\-");
    let mut out = String::new();
    for (i, part) in escaped.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("\\fB{part}\\fR"));
        } else {
            out.push_str(part);
        }
    }
    // A line may not start with a control character.
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

/// `sio.json(5)`: the fields of `/etc/sio/APP.json`.
pub fn config_page() -> String {
    let mut page = format!(
        ".TH SIO.JSON 5 \"\" \"sio {}\" \"File formats\"\n\
         .SH NAME\nsio.json \\- the configuration of one sio app\n\
         .SH SYNOPSIS\n/etc/sio/\\fIAPP\\fR.json\n\
         .SH DESCRIPTION\n\
         One JSON object per app; the file name is the app's name (1\\(en64 of A\\(enZ a\\(enz 0\\(en9 _ \\-). \
         Unknown fields are errors, and an error names its field; nothing starts (exit code 78). \
         Every \\fB*.json\\fR file in the folder is an app.\n\
         .SH FIELDS\n",
        env!("CARGO_PKG_VERSION")
    );
    for f in FIELDS {
        page.push_str(&format!(".TP\n.B {}\n{} (default: {})\n", roff(f.name), roff(f.meaning), roff(f.default)));
    }
    page.push_str(SEE_ALSO);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_escapes_what_troff_would_read_as_commands() {
        assert_eq!(roff("a-b `x`"), "a\\-b \\fBx\\fR");
        assert_eq!(roff(".hidden"), "\\&.hidden");
        assert_eq!(roff("back\\slash"), "back\\\\slash");
    }

    #[test]
    fn the_config_page_lists_every_field() {
        let page = config_page();
        for f in FIELDS {
            assert!(page.contains(&format!(".B {}\n", roff(f.name))), "{}", f.name);
        }
    }
}
