//! `meshd generate man|completions DIR` (hidden): the man pages and shell completions, made from
//! the command line's own definitions so they cannot drift from it. scripts/package.sh runs it
//! and the .deb ships the result.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Command, Subcommand};
use clap_complete::Shell;
use clap_mangen::Man;

/// `meshd generate` subcommands.
#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// meshd.1 (with an EXIT STATUS section) and one page per subcommand (meshd-run.1, …).
    Man(DirArg),
    /// Completions for bash (meshd.bash), zsh (_meshd) and fish (meshd.fish).
    Completions(DirArg),
}

/// The directory to write into (created if missing).
#[derive(Debug, Args)]
pub struct DirArg {
    /// Where the files go.
    dir: PathBuf,
}

/// Runs a `meshd generate` subcommand on the command line's definition `cmd`.
pub fn run(command: &GenerateCommand, mut cmd: Command) -> anyhow::Result<ExitCode> {
    let dir = match command {
        GenerateCommand::Man(arg) | GenerateCommand::Completions(arg) => &arg.dir,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    match command {
        GenerateCommand::Man(_) => man_pages(cmd, dir)?,
        GenerateCommand::Completions(_) => {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let path = clap_complete::generate_to(shell, &mut cmd, "meshd", dir)
                    .with_context(|| format!("cannot write {shell} completions"))?;
                println!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// meshd.1 and a page for each visible subcommand, each named `meshd-<sub>[-<subsub>].1`.
fn man_pages(mut cmd: Command, dir: &Path) -> anyhow::Result<()> {
    cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let main = Man::new(cmd.clone());
    let path = dir.join(main.get_filename());
    let mut page = Vec::new();
    main.render_title(&mut page)?;
    main.render_name_section(&mut page)?;
    main.render_synopsis_section(&mut page)?;
    main.render_description_section(&mut page)?;
    main.render_options_section(&mut page)?;
    main.render_subcommands_section(&mut page)?;
    page.extend_from_slice(exit_status_section().as_bytes());
    main.render_version_section(&mut page)?;
    write(&path, &page)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub, dir)?;
    }
    Ok(())
}

fn subcommand_pages(cmd: &Command, dir: &Path) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        subcommand_pages(sub, dir)?;
    }
    let man = Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render(&mut page)?;
    write(&dir.join(man.get_filename()), &page)
}

/// The EXIT STATUS section (man-pages(7)'s name for it), from [`crate::exit::TABLE`].
fn exit_status_section() -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in crate::exit::TABLE {
        // A line starting with a dot or quote would be read as a request: none does.
        roff.push_str(&format!(
            ".TP\n\\fB{code}\\fR\n{}\n",
            meaning.replace('-', "\\-")
        ));
    }
    roff
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(data)?;
    println!("{}", path.display());
    Ok(())
}
