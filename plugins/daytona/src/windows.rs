//! Which windows a poll reads: a fixed grid of `window`-long windows from
//! the epoch, so windows are whole minutes, consecutive, never overlapping,
//! and a re-read names exactly the window it read before.

/// Window planning settings, all in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSettings {
    pub window_ms: i64,
    /// Windows end at most `now − settle_lag`.
    pub settle_lag_ms: i64,
    /// Already-read windows this far before the cursor are read again.
    pub lookback_ms: i64,
    /// The first window (aligned down); default `now − lookback`.
    pub start_ms: Option<i64>,
    /// New windows per poll; more makes the poll say `more`.
    pub max_new: usize,
}

/// `[from, to)` in milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from_ms: i64,
    pub to_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Read before, inside the look-back: read again for revisions.
    pub reread: Vec<Window>,
    /// Never read: from the cursor on.
    pub new: Vec<Window>,
    /// Where the next poll starts.
    pub next_cursor: Option<i64>,
    /// Complete windows remain after `new`.
    pub more: bool,
}

/// Plans one poll. `cursor` is where the next unread window starts.
pub fn plan_windows(s: &WindowSettings, cursor: Option<i64>, now_ms: i64) -> Plan {
    let w = s.window_ms.max(1);
    let floor = |t: i64| t.div_euclid(w) * w;
    let ceil = |t: i64| floor(t) + if t.rem_euclid(w) == 0 { 0 } else { w };
    let first = floor(s.start_ms.unwrap_or(now_ms - s.lookback_ms));
    let end_limit = now_ms - s.settle_lag_ms;

    let mut reread = Vec::new();
    if let Some(cursor) = cursor {
        let mut from = ceil(cursor - s.lookback_ms);
        if let Some(start) = s.start_ms {
            from = from.max(floor(start));
        }
        while from + w <= cursor {
            reread.push(Window { from_ms: from, to_ms: from + w });
            from += w;
        }
    }
    let mut from = cursor.unwrap_or(first);
    let mut new = Vec::new();
    while from + w <= end_limit && new.len() < s.max_new {
        new.push(Window { from_ms: from, to_ms: from + w });
        from += w;
    }
    Plan {
        // Without a cursor, pin the start even when nothing is complete yet,
        // so a default start (now − lookback) does not drift forward.
        next_cursor: new.last().map(|last| last.to_ms).or(cursor).or(Some(first)),
        more: from + w <= end_limit,
        reread,
        new,
    }
}
