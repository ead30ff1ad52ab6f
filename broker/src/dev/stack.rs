//! `wif-broker dev`: the whole stack on loopback.

pub async fn run(_listen: &str) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
