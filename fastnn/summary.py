"""model.summary(): Keras 3's table (keras/src/utils/summary_utils.py, drawn there by `rich`),
reproduced character for character without the dependency."""
import shutil
import sys
import textwrap


def readable_size(nbytes):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes / 1024 < 1:
            return f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.2f} PB"


def column_widths(line_length, positions):
    """Inner (text) widths of the columns. Keras asks rich for a table `line_length` wide with
    columns of int(pos * line_length) - previous; rich then shrinks the padded columns to fit
    the borders, taking an equal share (rounded half-to-even) from each in turn."""
    widths, current = [], 0
    for pos in positions:
        width = int(pos * line_length) - current
        if width < 4:
            raise ValueError("Insufficient console width to print summary.")
        widths.append(width)
        current += width
    padded = [w + 2 for w in widths]
    excess = sum(padded) - (line_length - len(widths) - 1)
    remaining, shares = excess, len(padded)
    for i in range(len(padded)):
        if excess <= 0:
            break
        cut = min(padded[i], round(remaining / shares))
        padded[i] -= cut
        remaining -= cut
        shares -= 1
    return [w - 2 for w in padded]


def _cell_lines(text, width, align):
    # rich wraps at spaces and cuts a word longer than the column with an ellipsis
    lines = textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False) or [""]
    lines = [line if len(line) <= width else line[:width - 1] + "…" for line in lines]
    if align == "right":
        return [line.rjust(width) for line in lines]
    if align == "center":
        return [line.center(width) for line in lines]
    return [line.ljust(width) for line in lines]


def _row(cells, widths, aligns, bar="│"):
    columns = [_cell_lines(c, w, a) for c, w, a in zip(cells, widths, aligns)]
    height = max(len(c) for c in columns)
    out = []
    for i in range(height):
        parts = [col[i] if i < len(col) else " " * w for col, w in zip(columns, widths)]
        out.append(bar + bar.join(f" {p} " for p in parts) + bar)
    return out


def _rule(widths, left, mid, right, fill):
    return left + mid.join(fill * (w + 2) for w in widths) + right


def format_summary(name, rows, trainable, non_trainable, optimizer_params=None,
                   line_length=None, positions=None, show_trainable=False, connected=False):
    """rows: (layer label, output shape text, param count or text, trainable flag or None for
    weightless layers[, connected-to text when `connected`: a graph that is not a chain]).
    Returns the summary text, lines joined with newlines."""
    if connected:
        default = 108
        positions = list(positions or [0.3, 0.56, 0.74, 1.0])
        header = ["Layer (type)", "Output Shape", "Param #", "Connected to"]
        aligns = ["left", "left", "right", "left"]
    else:
        default = 88
        positions = list(positions or [0.45, 0.80, 1.0])
        header, aligns = ["Layer (type)", "Output Shape", "Param #"], ["left", "left", "right"]
    if show_trainable:
        default += 12
        positions = [p * 0.90 for p in positions] + [1.0]
        header.append("Trainable")
        aligns.append("center")
    line_length = line_length or min(default, shutil.get_terminal_size().columns - 4)
    widths = column_widths(line_length, positions)
    # Headers are cut with an ellipsis rather than wrapped, as rich does.
    heads = [h if len(h) <= w else h[:w - 1] + "…" for h, w in zip(header, widths)]
    lines = [f'Model: "{name}"', _rule(widths, "┏", "┳", "┓", "━")]
    lines += _row(heads, widths, aligns[:3] + ["left"] * connected + ["center"], bar="┃")
    lines.append(_rule(widths, "┡", "╇", "┩", "━"))
    for i, (label, shape, params, flag, *links) in enumerate(rows):
        if i:
            lines.append(_rule(widths, "├", "┼", "┤", "─"))
        cells = [label, shape, f"{params:,}" if isinstance(params, int) else str(params)]
        cells += links[:1] if connected else []
        if show_trainable:
            cells.append("-" if flag is None else "Y" if flag else "N")
        lines += _row(cells, widths, aligns)
    lines.append(_rule(widths, "└", "┴", "┘", "─"))
    total = trainable + non_trainable + (optimizer_params or 0)
    lines.append(f" Total params: {total:,} ({readable_size(4 * total)})")
    lines.append(f" Trainable params: {trainable:,} ({readable_size(4 * trainable)})")
    lines.append(f" Non-trainable params: {non_trainable:,} "
                 f"({readable_size(4 * non_trainable)})")
    if optimizer_params is not None:
        lines.append(f" Optimizer params: {optimizer_params:,} "
                     f"({readable_size(4 * optimizer_params)})")
    return "\n".join(lines) + "\n"


def print_summary(name, rows, trainable, non_trainable, optimizer_params=None,
                  line_length=None, positions=None, print_fn=None, show_trainable=False,
                  connected=False):
    text = format_summary(name, rows, trainable, non_trainable, optimizer_params, line_length,
                          positions, show_trainable, connected)
    if print_fn is not None:
        print_fn(text)      # one call with the whole table, as Keras does
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
