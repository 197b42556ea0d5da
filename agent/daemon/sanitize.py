"""Clean issue text before a coding agent reads it, and name the agent's branch.

An issue body can carry instructions a human reader never sees: HTML comments, zero-width and
bidi-control characters, Unicode tag characters (invisible ASCII), image alt text and HTML
attributes such as title= or aria-label= that only show on hover or to a screen reader. Only
issues from trusted authors reach the agent lane, but bodies get edited and comments quoted, so
the text is cleaned anyway (the same list claude-code-action strips).

    sanitize(text) -> str          what the agent gets from `refinery queue claim --lane agent --json`
    branch_name(12, "Fix X")       -> "agent/i12-fix-x"

Visible text is kept as written; only what cannot be seen goes. The passes repeat until the
text stops changing, so nesting (`<!-<!-- -->- x -->`) or an invisible character splitting a
marker (`<!\u200b-- x -->`) does not survive.
"""

from __future__ import annotations

import html
import re
import unicodedata

# Zero-width and formatting characters, bidi embeddings/overrides/isolates and marks, the
# soft hyphen, the BOM, Mongolian vowel separator, Hangul fillers, and the two invisible blocks
# used for "ASCII smuggling": tag characters (U+E0000-E007F) and variation selectors 17-256.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0e\ufeff\uffa0\ufff9-\ufffb\U0001d173-\U0001d17a\U000e0000-\U000e007f"
    "\U000e0100-\U000e01ef]"
)
# C0/C1 controls except tab, newline and carriage return.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_HTML_COMMENT = re.compile(r"<!--.*?(?:--!?>|$)", re.S)  # an unclosed comment hides the rest
# Numeric character references (&#8203; &#x200B;): decoded, so an encoded invisible is caught too.
_NUMERIC_REF = re.compile(r"&#(?:[xX]([0-9a-fA-F]{1,6})|([0-9]{1,7}));?")
_NAMED_REF = re.compile(r"&[A-Za-z][A-Za-z0-9]{1,31};")  # &ZeroWidthSpace; &shy; &zwj; ...
# ![alt](url "title") and ![alt][ref]: the alt and the title go, the image stays.
_MD_IMAGE = re.compile(r"!\[((?:[^\[\]\\]|\\.|\[[^\[\]]*\])*)\](\(|\[)")
_TITLE = r"""(?:"[^"]*"|'[^']*'|\([^()]*\))"""  # a link title in any of its three quotings
_MD_LINK_TITLE = re.compile(r"(\]\(\s*<?[^\s()<>]*(?:\([^\s()]*\))?[^\s()<>]*>?)\s+" + _TITLE + r"\s*\)")
_MD_REF_TITLE = re.compile(r"^( {0,3}\[[^\]]+\]:\s*\S+)\s+" + _TITLE + r"\s*$", re.M)
# HTML attributes a reader does not see. Matched inside a tag only.
_HIDDEN_ATTRS = r"(?:alt|title|aria-[a-z-]+|data-[a-z0-9_.:-]+|placeholder|label|summary|content)"
_TAG = re.compile(r"<[a-zA-Z][^<>]*>")
_ATTR = re.compile(r"\s" + _HIDDEN_ATTRS + r"""\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+)""", re.I)
# Elements whose content is never shown.
_HIDDEN_ELEMENTS = re.compile(r"<(script|style|template|noscript)\b[^>]*>.*?(?:</\1\s*>|$)", re.S | re.I)

_MARKUP = {0x3C, 0x3E, 0x26, 0x22, 0x27}  # < > & " ': kept as a reference, so no tag can form


def _invisible(ch: str) -> bool:
    return bool(_INVISIBLE.fullmatch(ch) or _CONTROL.fullmatch(ch))


def _decode_numeric(m: re.Match) -> str:
    code = int(m.group(1), 16) if m.group(1) else int(m.group(2))
    if code in _MARKUP:
        return m.group(0)
    try:
        ch = chr(code)
    except (ValueError, OverflowError):
        return ""
    return "" if _invisible(ch) else ch


def _drop_named_invisible(m: re.Match) -> str:
    ch = html.unescape(m.group(0))
    return "" if len(ch) == 1 and _invisible(ch) else m.group(0)


def _strip_image_alt(m: re.Match) -> str:
    return "![]" + m.group(2)


def _clean_tag(m: re.Match) -> str:
    return _ATTR.sub("", m.group(0))


def _pass(text: str) -> str:
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub("", text)
    text = _NUMERIC_REF.sub(_decode_numeric, text)
    text = _NAMED_REF.sub(_drop_named_invisible, text)
    text = _HTML_COMMENT.sub("", text)
    text = _HIDDEN_ELEMENTS.sub("", text)
    text = _MD_IMAGE.sub(_strip_image_alt, text)
    text = _MD_LINK_TITLE.sub(r"\1)", text)
    text = _MD_REF_TITLE.sub(r"\1", text)
    text = _TAG.sub(_clean_tag, text)
    return text


def sanitize(text: str | None, max_passes: int = 10) -> str:
    """`text` with everything a reader cannot see removed (see the module docstring)."""
    if not text:
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for _ in range(max_passes):
        cleaned = _pass(text)
        if cleaned == text:
            break
        text = cleaned
    return text


_SLUG_DROP = re.compile(r"[^a-z0-9]+")


def slug(title: str, max_len: int = 40) -> str:
    """lower-case ASCII words joined by '-', cut at a word boundary; '' if nothing is left."""
    ascii_title = unicodedata.normalize("NFKD", sanitize(html.unescape(title or ""))).encode("ascii", "ignore")
    words = [w for w in _SLUG_DROP.split(ascii_title.decode().lower()) if w]
    out = ""
    for w in words:
        candidate = f"{out}-{w}" if out else w
        if len(candidate) > max_len:
            if not out:
                out = w[:max_len]
            break
        out = candidate
    return out


def branch_name(issue: int, title: str, prefix: str = "agent") -> str:
    """The agent's branch for an issue: 'agent/i12-short-slug', a valid git ref for any title."""
    if isinstance(issue, bool) or not isinstance(issue, int) or issue < 0:
        raise ValueError(f"issue must be a non-negative int, got {issue!r}")
    s = slug(title)
    return f"{prefix}/i{issue}-{s}" if s else f"{prefix}/i{issue}"
