//! Tool names across aggregated servers: each server's tools are shown as
//! `<prefix>__<tool>`. A prefix may itself contain `__`, so a name is read back with the
//! longest prefix it starts with; a name that would read back as another server's tool is
//! not shown at all, so no two shown names collide and each leads to the tool it names.

pub const SEPARATOR: &str = "__";

/// The prefixes of the servers a key reaches, each with its server's index.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Longest first.
    prefixes: Vec<(String, usize)>,
}

impl Names {
    pub fn new<'a>(prefixes: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let mut prefixes: Vec<(String, usize)> = prefixes
            .into_iter()
            .map(|(p, i)| (p.to_string(), i))
            .collect();
        prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        prefixes.dedup_by(|a, b| a.0 == b.0);
        Names { prefixes }
    }

    /// The server and tool a shown name stands for.
    pub fn split<'n>(&self, name: &'n str) -> Option<(usize, &'n str)> {
        self.prefixes.iter().find_map(|(p, i)| {
            let tool = name.strip_prefix(p.as_str())?.strip_prefix(SEPARATOR)?;
            (!tool.is_empty()).then_some((*i, tool))
        })
    }

    /// The name to show for `tool` of the server with `prefix` (index `server`), or `None`
    /// when that name would lead elsewhere.
    pub fn show(&self, prefix: &str, server: usize, tool: &str) -> Option<String> {
        if tool.is_empty() {
            return None;
        }
        let name = format!("{prefix}{SEPARATOR}{tool}");
        (self.split(&name) == Some((server, tool))).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shown_name_leads_back_to_its_tool_and_none_collide() {
        let names = Names::new([("time", 0), ("fs", 1), ("fs__admin", 2)]);
        assert_eq!(names.show("time", 0, "now").as_deref(), Some("time__now"));
        assert_eq!(names.split("time__now"), Some((0, "now")));
        // A tool name with the separator in it is fine when nothing else claims it.
        assert_eq!(
            names.show("time", 0, "zone__list").as_deref(),
            Some("time__zone__list")
        );
        assert_eq!(names.split("time__zone__list"), Some((0, "zone__list")));
        // `fs`'s tool `admin__drop` would read as `fs__admin`'s `drop`: not shown.
        assert_eq!(names.show("fs", 1, "admin__drop"), None);
        assert_eq!(
            names.show("fs__admin", 2, "drop").as_deref(),
            Some("fs__admin__drop")
        );
        assert_eq!(names.split("fs__admin__drop"), Some((2, "drop")));
        assert_eq!(names.split("fs__read"), Some((1, "read")));
        for unknown in ["other__x", "time", "time__", "timenow", ""] {
            assert_eq!(names.split(unknown), None, "{unknown}");
        }
    }
}
