"""The prompt language, for prompt and negative alike: AUTOMATIC1111's syntax, parsed into immutable values.

- `attention`: `(x)`, `[x]`, `(x:w)`, escapes, BREAK -> weighted fragments;
- `schedule`: `[from:to:when]`, `[to:when]`, `[from::when]`, `[a|b]` -> the text at each step;
- `composable`: `AND` with optional `:weight` -> weighted sub-prompts;
- `parse`: all three together, the value the conditioning step consumes.

Only the standard library and `lark` (the parser library A1111 itself uses for schedules) are imported.
"""

from avert.prompts.attention import BREAK, Fragment, parse_attention
from avert.prompts.composable import SubPrompt, split_and
from avert.prompts.parse import ParsedPrompt, ScheduledPrompt, ScheduledText, parse_prompt
from avert.prompts.schedule import ScheduleEntry, schedule

__all__ = [
    "BREAK", "Fragment", "parse_attention", "SubPrompt", "split_and", "ScheduleEntry", "schedule",
    "ParsedPrompt", "ScheduledPrompt", "ScheduledText", "parse_prompt",
]
