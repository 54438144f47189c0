"""The generated codec functions are compiled on first call (a process pays only for the messages it
uses), and once compiled the very function object every caller holds runs the generated code."""

import subprocess
import sys

from bcast_sp4 import wire
from bcast_sp4.wire import ecmg_scs as E
from bcast_sp4.wire import message as codegen

GENERATED = "<bcast_sp4.wire generated "


def _functions(cls):
    yield from cls._DECODERS.values()
    yield from cls._ENCODERS.values()
    yield cls.make
    yield from (decoder for _deviation, decoder in cls._RELAXED.values())


def test_a_fresh_interpreter_imports_the_codec_without_compiling_it():
    code = (
        "from bcast_sp4 import wire\n"
        "functions = [f for cls in wire.MESSAGE_CLASSES.values()"
        " for f in [*cls._DECODERS.values(), *cls._ENCODERS.values(), cls.make]]\n"
        "pending = [f for f in functions if f.__code__.co_filename == '<bcast_sp4.wire placeholder>']\n"
        "print(len(functions), len(pending))\n"
        "assert len(pending) == len(functions) > 100, (len(functions), len(pending))\n"
        "wire.decode(wire.ecmg_scs.ChannelTest(ECM_channel_id=3).encode())\n"
        "compiled = [f for f in functions if f.__code__.co_filename.startswith('<bcast_sp4.wire generated ')]\n"
        "names = sorted({f.__code__.co_filename for f in compiled})\n"
        "assert names == ['<bcast_sp4.wire generated bcast_sp4.wire.ecmg_scs.ChannelTest.decode>',"
        " '<bcast_sp4.wire generated bcast_sp4.wire.ecmg_scs.ChannelTest.encode>'], names\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_reference_taken_before_the_first_call_runs_the_generated_code_after_it():
    make = E.StreamCloseResponse.make  # held like the ECMG holds ECMResponse.make
    decoders = dict(E.StreamCloseResponse._DECODERS)
    made = make(2, 4, 5)
    assert made == E.StreamCloseResponse(protocol_version=2, ECM_channel_id=4, ECM_stream_id=5)
    assert make is E.StreamCloseResponse.make and make.__code__.co_filename == GENERATED + (
        "bcast_sp4.wire.ecmg_scs.StreamCloseResponse.make>")
    frame = made.encode()
    assert wire.decode(frame) == made
    assert decoders[2].__code__.co_filename.endswith("StreamCloseResponse.decode>")
    assert decoders[2] is E.StreamCloseResponse._DECODERS[2] is codegen.DECODERS[E.StreamCloseResponse.MESSAGE_TYPE << 8 | 2][1]


def test_every_compiled_function_is_the_code_of_its_generated_source():
    """Calling each placeholder's compile step gives the same code as compiling the generated source."""
    for cls in wire.MESSAGE_CLASSES.values():
        for function in _functions(cls):
            if function.__code__.co_filename == "<bcast_sp4.wire placeholder>":
                function.__globals__["_materialize"]()
            assert function.__code__.co_filename.startswith(GENERATED), function
            assert function.__name__ == function.__code__.co_name
        for version, group in codegen.VERSION_GROUPS[cls.INTERFACE].items():
            source = codegen.generated_source(cls, version)
            assert _parts(cls._DECODERS[version].__code__) == _parts(_code(source, "decode"))
            assert _parts(cls._ENCODERS[version].__code__) == _parts(_code(source, "encode"))
        argnames = ("protocol_version", *(ptype.name for ptype, _cards in cls.PARAMS))
        assert cls.make.__code__.co_varnames[: cls.make.__code__.co_argcount] == argnames


def _code(source: str, name: str):
    scope: dict = {}
    exec(compile(source, "<test>", "exec"), scope)
    return scope[name].__code__


def _parts(code):
    """What a function does: its bytecode, constants and names (not its file name or compile flags)."""
    return code.co_code, code.co_consts, code.co_names, code.co_varnames
