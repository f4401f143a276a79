"""The Ascend NPU compile step: ATC command (atc), operator check (opcheck), where ATC runs
(runners, board_runner), putting model.om into the bundle (install), the step itself (compile).
Chip names, plugin discovery and CANN versions are board/ascend.py's, shared with deploy."""
