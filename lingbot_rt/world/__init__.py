"""The built-in world: a procedurally generated first-person 3D world, deterministic by seed,
rendered exactly, that serves as training data and ground truth for a key-steered world model.

    world = generate_map(seed)                                   # map.py (conventions: config.py)
    keys, poses = play(world, spawn_pose(world, seed), 81, seed)  # players.py, walker.py
    frames = Renderer(world).render(poses, world.config.intrinsics(H, W), H, W)     # renderer.py
    generate_dataset("data/world", num_clips=1000)                # data.py; cli.py: `world gen-data`
"""
from .config import WorldConfig
from .data import Clip, ClipDataset, ClipError, generate_dataset, load_clip
from .map import WorldMap, generate_map, spawn_pose
from .players import ScriptedPlayer, play
from .renderer import Renderer
from .walker import Walker

__all__ = ["Clip", "ClipDataset", "ClipError", "Renderer", "ScriptedPlayer", "Walker", "WorldConfig", "WorldMap",
           "generate_dataset", "generate_map", "load_clip", "play", "spawn_pose"]
