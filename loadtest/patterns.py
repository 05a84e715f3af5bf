"""Scripted key patterns: what a simulated player holds, and when it changes.

A pattern is a loop of segments (keys held, video frames), written in the action-string
grammar of `lingbot-rt play --actions` ("w-32,wl-12,none-16": keys, dash, frames). The player
turns frames into seconds with the session's fps and follows the loop on the wall clock, as a
person presses keys whatever the stream does; it sends an action only when the held keys change
(what the gateway asks of clients), so every change is one action->frame latency sample.
"""
from __future__ import annotations

from dataclasses import dataclass

from lingbot_rt.model.controls import parse_action_string
from lingbot_rt.services.client import held_keys

# Named patterns (frames at the default 16 fps; one loop of each is 8-10 s).
PATTERNS = {
    # held keys, turns and idle: walk 2 s, walk + turn 0.75 s, walk, stand, look, strafe, back, stand
    "mixed": "w-32,wl-12,w-20,none-16,j-12,d-16,s-8,none-12",
    "walk": "w-64,wl-8,w-56,wj-8",                     # long holds, an occasional turn
    "turns": "l-12,j-12,wl-12,wj-12,i-8,k-8",          # a change every half second or so
    "idle": "none-72,w-8",                             # mostly standing (still an action every 5 s)
}
PHASE_FRAMES = 37        # player i starts i * 37 frames into the loop, so changes do not align


@dataclass(frozen=True)
class KeyPattern:
    name: str
    segments: tuple[tuple[str, int], ...]      # (keys held, e.g. "wl" or "" for none; video frames)

    @classmethod
    def parse(cls, spec: str) -> KeyPattern:
        """A name from `PATTERNS` or an action string such as "w-32,l-16,none-16"."""
        actions = PATTERNS.get(spec, spec)
        try:
            keys = held_keys(parse_action_string(actions))
        except ValueError as exc:
            raise ValueError(f"pattern must be one of {sorted(PATTERNS)} or an action string "
                             f"(e.g. w-32,l-16,none-16): {exc}") from None
        segments: list[tuple[str, int]] = []
        for held in keys:                      # run-length: one segment per change of keys
            if segments and segments[-1][0] == held:
                segments[-1] = (held, segments[-1][1] + 1)
            else:
                segments.append((held, 1))
        if len(segments) > 1 and segments[0][0] == segments[-1][0]:      # the loop joins them
            segments[0] = (segments[0][0], segments[0][1] + segments.pop()[1])
        return cls(spec, tuple(segments))

    @property
    def loop_frames(self) -> int:
        return sum(frames for _, frames in self.segments)

    def changes(self, fps: float, phase_frames: int = 0):
        """Endless (seconds from the start, keys held from then on): first (0.0, the keys held
        `phase_frames` into the loop), then one item per change of keys."""
        phase = phase_frames % self.loop_frames
        for index, (keys, frames) in enumerate(self.segments):
            if phase < frames:
                break
            phase -= frames
        yield 0.0, keys
        if len(self.segments) == 1:            # nothing ever changes
            return
        elapsed = frames - phase               # frames until the segment held at the start ends
        while True:
            index = (index + 1) % len(self.segments)
            keys, frames = self.segments[index]
            yield elapsed / fps, keys
            elapsed += frames
