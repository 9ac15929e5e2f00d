//! The period a question names ("in March 2024", "during 2023", "in spring 2023",
//! "by late 2023", "Christmas 2022"), so that search can favour memories recorded then.
//!
//! Only explicit years are read: a relative time ("last summer") needs to know when the
//! question was asked relative to the memories, which a search does not. A question
//! about an earlier time that a memory merely mentions ("where did Tom go in 2019?",
//! asked of a 2023 conversation) is why the period only raises scores and never filters.

/// Milliseconds since the Unix epoch of 00:00 UTC on `day` of `month` (1-based) of `year`.
fn day_ms(year: i64, month: u32, day: u32) -> i64 {
    // Days from civil (Howard Hinnant's algorithm), proleptic Gregorian.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400_000
}

/// The start of the month after `month` of `year`.
fn month_end(year: i64, month: u32) -> i64 {
    if month == 12 {
        day_ms(year + 1, 1, 1)
    } else {
        day_ms(year, month + 1, 1)
    }
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

fn month_of(word: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| *m == word || (word.len() >= 3 && m.starts_with(word) && word != "may"))
        .map(|i| i as u32 + 1)
}

/// A period `[start, end)` in milliseconds since the Unix epoch.
pub type Period = (i64, i64);

/// The period the text names, the narrowest when it names a month or season with the
/// year; `None` without an explicit year between 1900 and 2199.
pub fn period_of(text: &str) -> Option<Period> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = super::lexical::split_words(&lower).collect();
    let (at, year) = words.iter().enumerate().find_map(|(i, w)| {
        let y: i64 = w.parse().ok().filter(|_| w.len() == 4)?;
        (1900..2200).contains(&y).then_some((i, y))
    })?;
    let before = |n: usize| at.checked_sub(n).and_then(|i| words.get(i)).copied();
    // "March 2024", "spring 2023", "late 2023", "start of 2023", "Christmas 2022".
    let word = before(1).unwrap_or_default();
    if let Some(month) = month_of(word) {
        return Some((day_ms(year, month, 1), month_end(year, month)));
    }
    let of = if word == "of" { before(2).unwrap_or_default() } else { word };
    Some(match of {
        "spring" => (day_ms(year, 3, 1), day_ms(year, 6, 1)),
        "summer" => (day_ms(year, 6, 1), day_ms(year, 9, 1)),
        "autumn" | "fall" => (day_ms(year, 9, 1), day_ms(year, 12, 1)),
        "winter" => (day_ms(year, 12, 1), day_ms(year + 1, 3, 1)),
        "christmas" => (day_ms(year, 12, 1), day_ms(year + 1, 1, 8)),
        "early" | "start" | "beginning" => (day_ms(year, 1, 1), day_ms(year, 5, 1)),
        "mid" | "middle" => (day_ms(year, 5, 1), day_ms(year, 9, 1)),
        "late" | "end" => (day_ms(year, 9, 1), day_ms(year + 1, 1, 1)),
        _ => (day_ms(year, 1, 1), day_ms(year + 1, 1, 1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::context::format_date;

    fn dates(p: Option<Period>) -> Option<(String, String)> {
        p.map(|(a, b)| (format_date(a), format_date(b)))
    }

    fn pair(a: &str, b: &str) -> Option<(String, String)> {
        Some((a.to_owned(), b.to_owned()))
    }

    #[test]
    fn explicit_periods_are_read_and_nothing_else() {
        assert_eq!(dates(period_of("Which book was Ines reading in March 2024?")), pair("2024-03-01", "2024-04-01"));
        assert_eq!(dates(period_of("What happened in December 2023?")), pair("2023-12-01", "2024-01-01"));
        assert_eq!(dates(period_of("What race did Ana run in spring 2023?")), pair("2023-03-01", "2023-06-01"));
        assert_eq!(dates(period_of("Who visited during winter 2023?")), pair("2023-12-01", "2024-03-01"));
        assert_eq!(dates(period_of("What pets did she have by late 2023?")), pair("2023-09-01", "2024-01-01"));
        assert_eq!(dates(period_of("Where did she work at the start of 2023?")), pair("2023-01-01", "2023-05-01"));
        assert_eq!(dates(period_of("What did Tom cook for Christmas 2022?")), pair("2022-12-01", "2023-01-08"));
        assert_eq!(dates(period_of("Where did Tom go in 2019?")), pair("2019-01-01", "2020-01-01"));
        assert_eq!(dates(period_of("Which Sept 2024 event?")), pair("2024-09-01", "2024-10-01"));
        assert_eq!(period_of("What did Tom cook last Christmas?"), None);
        assert_eq!(period_of("How many of the 1500 tickets sold?"), None);
        assert_eq!(period_of("The code is 123456."), None);
        // "may" is a verb far more often than a month, unless a year follows.
        assert_eq!(dates(period_of("What did she do in May 2023?")), pair("2023-05-01", "2023-06-01"));
    }
}
