from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientMessage(_message.Message):
    __slots__ = ("start", "action", "stop")
    START_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    start: Start
    action: Action
    stop: Stop
    def __init__(self, start: _Optional[_Union[Start, _Mapping]] = ..., action: _Optional[_Union[Action, _Mapping]] = ..., stop: _Optional[_Union[Stop, _Mapping]] = ...) -> None: ...

class Start(_message.Message):
    __slots__ = ("image", "builtin_scene", "prompt", "height", "width", "seed", "auth_token")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_SCENE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    builtin_scene: str
    prompt: str
    height: int
    width: int
    seed: int
    auth_token: str
    def __init__(self, image: _Optional[bytes] = ..., builtin_scene: _Optional[str] = ..., prompt: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., seed: _Optional[int] = ..., auth_token: _Optional[str] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("keys", "look_dx", "look_dy", "client_timestamp", "sequence")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    LOOK_DX_FIELD_NUMBER: _ClassVar[int]
    LOOK_DY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    keys: str
    look_dx: float
    look_dy: float
    client_timestamp: float
    sequence: int
    def __init__(self, keys: _Optional[str] = ..., look_dx: _Optional[float] = ..., look_dy: _Optional[float] = ..., client_timestamp: _Optional[float] = ..., sequence: _Optional[int] = ...) -> None: ...

class Stop(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("session_started", "frame", "error")
    SESSION_STARTED_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    session_started: SessionStarted
    frame: Frame
    error: Error
    def __init__(self, session_started: _Optional[_Union[SessionStarted, _Mapping]] = ..., frame: _Optional[_Union[Frame, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ...) -> None: ...

class SessionStarted(_message.Message):
    __slots__ = ("session_id", "fps", "height", "width")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    fps: int
    height: int
    width: int
    def __init__(self, session_id: _Optional[str] = ..., fps: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("sequence", "jpeg", "action_sequence", "client_timestamp", "timings")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    JPEG_FIELD_NUMBER: _ClassVar[int]
    ACTION_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    jpeg: bytes
    action_sequence: int
    client_timestamp: float
    timings: ServerTimings
    def __init__(self, sequence: _Optional[int] = ..., jpeg: _Optional[bytes] = ..., action_sequence: _Optional[int] = ..., client_timestamp: _Optional[float] = ..., timings: _Optional[_Union[ServerTimings, _Mapping]] = ...) -> None: ...

class ServerTimings(_message.Message):
    __slots__ = ("queue_seconds", "denoise_seconds", "decode_seconds", "jpeg_seconds")
    QUEUE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DENOISE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    JPEG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    queue_seconds: float
    denoise_seconds: float
    decode_seconds: float
    jpeg_seconds: float
    def __init__(self, queue_seconds: _Optional[float] = ..., denoise_seconds: _Optional[float] = ..., decode_seconds: _Optional[float] = ..., jpeg_seconds: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetCapacityRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Capacity(_message.Message):
    __slots__ = ("running", "waiting", "max_sessions", "max_waiting")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_WAITING_FIELD_NUMBER: _ClassVar[int]
    running: int
    waiting: int
    max_sessions: int
    max_waiting: int
    def __init__(self, running: _Optional[int] = ..., waiting: _Optional[int] = ..., max_sessions: _Optional[int] = ..., max_waiting: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "height", "width", "fps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    height: int
    width: int
    fps: int
    def __init__(self, name: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., fps: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...
