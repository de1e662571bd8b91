//! Builds a lab with one pod, prints `LAB-PREFIX <prefix>` and waits (at
//! most 60 s). Tests kill it to prove the signal handler removes the lab.
use std::io::Write;
use std::time::Duration;

use integration::lab::Lab;

fn main() {
    let lab = match Lab::new() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lab-hold: {e}");
            std::process::exit(1);
        }
    };
    let _pod = lab.pod("held");
    println!("LAB-PREFIX {}", lab.prefix());
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs(60));
}
