"""Markdown tables, so that the output pastes into BENCHMARKS.md as it is."""


def print_table(header, rows) -> None:
    rows = [[str(c) for c in r] for r in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def ms(seconds: float) -> str:
    """Seconds as whole milliseconds."""
    return f"{1e3 * seconds:.0f}"
