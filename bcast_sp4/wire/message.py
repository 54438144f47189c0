"""Message base class and the table-to-code compiler behind encode and decode.

TS 103 197 §4.4 (generic message: protocol_version u8, message_type u16, message_length u16, then
a loop of parameter_type u16 / parameter_length u16 / value), digest ``simulcrypt.md`` §1.2.

Each message class is declared once, as attrs fields in spec order with a cardinality per
protocol version group (:func:`param`). From that table :func:`message` generates, per class and
per version group, a straight-line ``decode`` and ``encode`` function, the way attrs generates
``__init__``: a TLV walk in plain ``if``/``elif`` over integer codes with inline ``struct`` calls
and explicit bounds checks. Each decoder first tries one ``struct`` call over the leading
mandatory integers (channel, stream, CP number: what every peer sends first) and falls back to
the loop from the first parameter when their types or lengths are not the expected ones. A
generic table-walking loop costs ~4 µs per CW_provision; the generated code decodes and encodes
it within 2 × a bare ``struct`` TLV walk (``benchmarks/codec.py``). ``generated_source(cls,
version)`` shows the code. Each function is compiled on its first call (:func:`_lazy`), not at import.

Rules the generated decoders enforce, in this order (digest §5.4):

* a TLV header or value running past the end of the message -> :class:`InvalidMessage`
  (error_information: byte offset);
* a parameter_type not allowed in this message and version -> :class:`UnknownParameterType`;
* a parameter_length outside the parameter's size -> :class:`InconsistentLength`;
* a single-valued parameter given twice -> :class:`WrongParameterCount`;
* a value outside its defined set -> :class:`InvalidValue`;
* a mandatory parameter absent -> :class:`MissingParameter`
  (error_information for the last four: the parameter_type).

Messages carry no attrs validators: the decoder has already checked every value, and the
encoder checks every value it writes (raising :class:`LocalProtocolError`), so the per-message
hot path pays for each check once.

Tolerated deviations (:class:`Deviation`). Some widely used peers break one rule in a known way.
For each such rule a message class that it can affect gets one more generated decoder, the strict
one with that single rule relaxed. :func:`~bcast_sp4.wire.header.decode` runs the strict decoder
as always and, only when it fails on exactly the relaxed rule and the caller listed the deviation
in ``tolerate``, decodes again with the relaxed one and records the deviation in the message's
``deviations`` (empty for every strictly decoded message). The strict hot path is unchanged.
"""

from __future__ import annotations

import enum
import re
import struct
from functools import partial
from types import FunctionType
from typing import Any, Callable, ClassVar

import attrs

from .errors import (
    InconsistentLength,
    Interface,
    InvalidMessage,
    InvalidValue,
    LocalProtocolError,
    MissingParameter,
    PeerProtocolError,
    UnknownParameterType,
    WrongParameterCount,
)
from .params import CP_CW_V1_LENGTH, CPCWCombination, Kind, ParamType

HEADER = struct.Struct(">BHH")
TLV = struct.Struct(">HH")
HEADER_SIZE = 5
TLV_HEADER_SIZE = 4
#: largest message the 16-bit message_length allows (5-byte header + 65 535)
MAX_MESSAGE_LENGTH = HEADER_SIZE + 0xFFFF

#: protocol versions each interface knows, and the version group whose tables apply
VERSION_GROUPS: dict[Interface, dict[int, int]] = {
    Interface.ECMG_SCS: {1: 0, 2: 1, 3: 1},
    Interface.EMMG_MUX: {1: 0, 2: 1, 3: 1, 4: 1, 5: 1},
}


class Card(enum.Enum):
    """Cardinality of a parameter in a message (digest §3.3 / §4.3 notation)."""

    ABSENT = "—"
    ONE = "1"
    OPTIONAL = "0/1"
    ANY = "0..n"
    SOME = "1..n"

    @property
    def repeated(self) -> bool:
        return self in (Card.ANY, Card.SOME)


ONE, OPTIONAL, ANY, SOME, ABSENT = Card.ONE, Card.OPTIONAL, Card.ANY, Card.SOME, Card.ABSENT


class Deviation(enum.Enum):
    """A known departure from TS 103 197 that :func:`~bcast_sp4.wire.header.decode` can tolerate.

    ``V1_DATA_ID``: ``data_id`` (0x0008) in an EMMG<=>MUX protocol_version 1 ``stream_setup``,
    ``stream_status`` or ``data_provision``. v1 defines no data_id (digest ``simulcrypt.md`` §4.2);
    a widely used EMMG sends it anyway and Wireshark decodes it. Tolerated, the message decodes
    with v1 rules plus an optional data_id, which is read as in v2. Nothing else is relaxed: a
    data_id given twice, or any other parameter out of place, is still an error.
    """

    V1_DATA_ID = "v1-data_id"

    @property
    def description(self) -> str:
        return _DEVIATION_TEXT[self]


_DEVIATION_TEXT = {
    Deviation.V1_DATA_ID: "data_id (0x0008) in an EMMG<=>MUX v1 message; TS 103 197 v1 has no data_id,"
    " decoded as in v2",
}
#: deviation -> (interface, protocol versions, name of the parameter whose v1 ABSENT becomes 0/1)
_RELAXATIONS: dict[Deviation, tuple[Interface, tuple[int, ...], str]] = {
    Deviation.V1_DATA_ID: (Interface.EMMG_MUX, (1,), "data_id"),
}
_NO_DEVIATIONS: frozenset = frozenset()


def param(v1: Card, v2: Card | None = None, *, repr: bool = True) -> Any:
    """Declare a message field: its cardinality in version group 1 and in group 2 (v2 and later).

    Fields mandatory in every version have no default; repeated ones default to ``()``; the
    rest to ``None`` (absent).
    """
    cards = (v1, v1 if v2 is None else v2)
    meta = {"cards": cards}
    if cards == (ONE, ONE):
        return attrs.field(metadata=meta, repr=repr)
    if v1.repeated:
        return attrs.field(default=(), metadata=meta, repr=repr)
    return attrs.field(default=None, metadata=meta, repr=repr)


class _DeviationSlot:
    """Holds ``Message._deviations`` outside the attrs fields (no equality, hash, repr, asdict).

    Set only by a tolerant decode and left unset otherwise, so no hot path pays for storing it.
    """

    __slots__ = ("_deviations",)


@attrs.frozen(kw_only=True)
class Message(_DeviationSlot):
    """A SimulCrypt message: its protocol_version plus the named parameters of its type."""

    protocol_version: int = 3

    #: filled in by :func:`message`; ``make(protocol_version, *fields)`` builds one positionally
    INTERFACE: ClassVar[Interface]
    MESSAGE_TYPE: ClassVar[int]
    NAME: ClassVar[str]
    PARAMS: ClassVar[tuple[tuple[ParamType, tuple[Card, Card]], ...]]
    _DECODERS: ClassVar[dict[int, Callable[[bytes, int, int], "Message"]]]
    _ENCODERS: ClassVar[dict[int, Callable[["Message", int], bytes]]]
    #: ``(protocol_version, parameter_type) -> (deviation, relaxed decoder)``, see :class:`Deviation`
    _RELAXED: ClassVar[dict[tuple[int, int], tuple[Deviation, Callable[[bytes, int, int], "Message"]]]]

    @property
    def deviations(self) -> frozenset[Deviation]:
        """The :class:`Deviation` members this message was decoded with (empty unless a tolerant
        :func:`~bcast_sp4.wire.header.decode` accepted one)."""
        return getattr(self, "_deviations", _NO_DEVIATIONS)

    def encode(self) -> bytes:
        """The message on the wire.

        :raises LocalProtocolError: a value, count or length the protocol cannot carry.
        """
        version = self.protocol_version
        encoder = self._ENCODERS.get(version)
        if encoder is None:
            raise LocalProtocolError(
                f"{self.NAME}: protocol_version {version!r} is not a version of {self.INTERFACE.value}"
            )
        try:
            return encoder(self, version)
        except (struct.error, TypeError, ValueError) as exc:
            missing = [p.name for p, cards in self.PARAMS if cards == (ONE, ONE) and getattr(self, p.name) is None]
            why = f"{', '.join(missing)} mandatory" if missing else str(exc)
            raise LocalProtocolError(f"{self.NAME}: cannot encode: {why}") from None


#: message_type -> message class, both interfaces (their type codes do not overlap)
MESSAGE_CLASSES: dict[int, type[Message]] = {}
#: ``message_type << 8 | protocol_version`` -> (interface, strict decoder), one look-up per message
DECODERS: dict[int, tuple[Interface, Callable[[bytes, int, int], Message]]] = {}


def message(interface: Interface, message_type: int, name: str, table: dict[str, ParamType]):
    """Class decorator: make an attrs message class and compile its codec from its fields."""

    def wrap(cls: type) -> type[Message]:
        cls = attrs.frozen(kw_only=True)(cls)
        cls.INTERFACE = interface
        cls.MESSAGE_TYPE = message_type
        cls.NAME = name
        cls.PARAMS = tuple(
            (table[f.name], f.metadata["cards"]) for f in attrs.fields(cls) if "cards" in f.metadata
        )
        decoders, encoders = [], []
        for group in (0, 1):
            decoders.append(_lazy(cls, "decode", _DECODE_ARGS, lambda g=group: _decoder_source(cls, g)))
            encoders.append(_lazy(cls, "encode", _ENCODE_ARGS, lambda g=group: _encoder_source(cls, g)))
        cls._DECODERS = {v: decoders[g] for v, g in VERSION_GROUPS[interface].items()}
        make_args = ("protocol_version", *(ptype.name for ptype, _cards in cls.PARAMS))
        cls.make = staticmethod(_lazy(cls, "make", make_args, lambda: _maker_source(cls)))
        cls._ENCODERS = {v: encoders[g] for v, g in VERSION_GROUPS[interface].items()}
        cls._RELAXED = _relaxed_decoders(cls)
        assert message_type not in MESSAGE_CLASSES
        MESSAGE_CLASSES[message_type] = cls
        for version, decoder in cls._DECODERS.items():
            DECODERS[message_type << 8 | version] = (interface, decoder)
        return cls

    return wrap


def _relaxed_decoders(cls: type[Message]) -> dict[tuple[int, int], tuple[Deviation, Callable]]:
    """The decoders of *cls* with one :class:`Deviation`'s rule relaxed (see ``_RELAXATIONS``)."""
    out: dict[tuple[int, int], tuple[Deviation, Callable]] = {}
    for deviation, (interface, versions, name) in _RELAXATIONS.items():
        if cls.INTERFACE is not interface:
            continue
        for index, (ptype, _cards) in enumerate(cls.PARAMS):
            if ptype.name != name:
                continue
            for version in versions:
                group = VERSION_GROUPS[interface][version]
                if cls.PARAMS[index][1][group] is ABSENT:
                    source = partial(_decoder_source, cls, group, relax={index: OPTIONAL})
                    out[(version, ptype.code)] = (deviation, _lazy(cls, "decode", _DECODE_ARGS, source))
    return out


def _maker_source(cls: type[Message]) -> str:
    """``make(protocol_version, <every field in declaration order>)``: a positional constructor
    for hot paths (same instance as the keyword ``__init__``; messages have no validators)."""
    names = [ptype.name for ptype, _cards in cls.PARAMS]
    lines = [f"def make(protocol_version, {', '.join(names)}):", "    m = _new(_cls)", "    _set_protocol_version(m, protocol_version)"]
    lines += [f"    _set{i}(m, {name})" for i, name in enumerate(names)]
    lines.append("    return m")
    return "\n".join(lines) + "\n"


def generated_source(cls: type[Message], version: int) -> str:
    """The generated decode and encode source of *cls* for *version* (for reading and debugging)."""
    group = VERSION_GROUPS[cls.INTERFACE][version]
    return _decoder_source(cls, group) + "\n" + _encoder_source(cls, group)


# --------------------------------------------------------------------------------------------
# Code generation. Names available to generated code are those of _namespace().

_PACK_CODE = {Kind.U8: "B", Kind.BOOL: "B", Kind.U16: "H", Kind.I16: "h", Kind.U32: "I"}


def _namespace(cls: type[Message]) -> dict[str, Any]:
    ns: dict[str, Any] = {
        "_cls": cls,
        "_TL": TLV.unpack_from,
        "_StructError": struct.error,
        "_pack_tl": TLV.pack,
        "_pack_header": HEADER.pack,
        "_CPCW": CPCWCombination,
        "_tuple_new": tuple.__new__,
        "_new": object.__new__,
        "_set_protocol_version": cls.protocol_version.__set__,
        "_Invalid": InvalidMessage,
        "_Unknown": UnknownParameterType,
        "_Length": InconsistentLength,
        "_Count": WrongParameterCount,
        "_Missing": MissingParameter,
        "_Value": InvalidValue,
        "_Local": LocalProtocolError,
        "_NAME": cls.NAME,
    }
    for index, (ptype, _cards) in enumerate(cls.PARAMS):
        if ptype.values is not None:
            ns[f"_values{index}"] = ptype.values
        ns[f"_set{index}"] = getattr(cls, ptype.name).__set__
        if ptype.kind in _PACK_CODE:
            ns[f"_pack{index}"] = struct.Struct(">HH" + _PACK_CODE[ptype.kind]).pack
    for group in (0, 1):
        for k, run in enumerate(_fixed_runs(cls, group)):
            ns[f"_run{group}_{k}"] = _run_struct(cls, run).pack
    ns["_pack_cpcw"] = struct.Struct(">HHH").pack
    return ns


def _compile(source: str, cls: type[Message], name: str, namespace: dict[str, Any]) -> Callable:
    """Compile generated *source* defining function *name* into *namespace*, its globals."""
    namespace.update(_namespace(cls))
    for fmt in re.findall(r"\b_prefix_(\w+)\(", source):  # the decoder's speculative prefix reader
        namespace[f"_prefix_{fmt}"] = struct.Struct(">" + fmt).unpack_from
    filename = f"<bcast_sp4.wire generated {cls.__module__}.{cls.__name__}.{name}>"
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own generated code
    return namespace[name]


_DECODE_ARGS = ("b", "end", "version")
_ENCODE_ARGS = ("m", "version")
#: placeholder code objects by (name, argument names): forward the call to _materialize()
_PLACEHOLDERS: dict[tuple[str, tuple[str, ...]], Any] = {}


def _lazy(cls: type[Message], name: str, args: tuple[str, ...], source: Callable[[], str]) -> Callable:
    """A function with the generated function's name and signature that compiles it on first call.

    Compiling the ~140 generated functions of both interfaces costs ~0.15 s, paid by every process
    that imports the codec, and a process uses a handful of them. So each starts as a placeholder
    whose globals are its own dict; its first call generates and compiles the real code into that
    dict and swaps the placeholder's ``__code__`` for the real one. From then on the very function
    object every caller holds (``cls.make``, the ``DECODERS`` entry, a bound local) runs the
    generated code itself, with the same globals lookups as an eagerly compiled one: the hot path
    has no extra call. Generation is deterministic, so a second thread compiling concurrently only
    installs equal code.
    """
    key = (name, args)
    code = _PLACEHOLDERS.get(key)
    if code is None:
        arglist = ", ".join(args)
        placeholder = f"def {name}({arglist}):\n    return _materialize()({arglist})\n"
        scope: dict[str, Any] = {}
        exec(compile(placeholder, "<bcast_sp4.wire placeholder>", "exec"), scope)  # noqa: S102 - fixed text
        code = _PLACEHOLDERS[key] = scope[name].__code__
    namespace: dict[str, Any] = {"__builtins__": __builtins__}
    function = FunctionType(code, namespace, name)

    def materialize() -> Callable:
        function.__code__ = _compile(source(), cls, name, namespace).__code__
        return function

    namespace["_materialize"] = materialize
    return function


def _length_bounds(ptype: ParamType, group: int) -> tuple[int, int]:
    if ptype.fixed_size is not None:
        return ptype.fixed_size, ptype.fixed_size
    if ptype.kind is Kind.CP_CW and group == 0:
        return CP_CW_V1_LENGTH, CP_CW_V1_LENGTH
    return ptype.min_length, ptype.max_length


def _value_expr(ptype: ParamType) -> str:
    """Expression decoding the value at b[p:pos] (pos = end of value)."""
    kind = ptype.kind
    if kind in (Kind.U8, Kind.BOOL):
        return "b[p]"
    if kind is Kind.U16:
        return "(b[p] << 8) | b[p + 1]"
    if kind is Kind.I16:
        return "((b[p] << 8) | b[p + 1]) - ((b[p] & 0x80) << 9)"
    if kind is Kind.U32:
        return "int.from_bytes(b[p:pos], 'big')"
    if kind is Kind.BYTES:
        return "b[p:pos]"
    return "_tuple_new(_CPCW, ((b[p] << 8) | b[p + 1], b[p + 2:pos]))"


def _decoder_source(cls: type[Message], group: int, relax: dict[int, Card] | None = None) -> str:
    """The decoder of *cls* for *group*; *relax* overrides the cardinality of some parameters."""
    relax = relax or {}
    params = [(i, pt, relax.get(i, cards[group])) for i, (pt, cards) in enumerate(cls.PARAMS)]
    allowed = [(i, pt, card) for i, pt, card in params if card is not ABSENT]
    assert allowed, f"{cls.NAME} declares no parameter"
    lines = ["def decode(b, end, version):"]
    for i, _pt, card in allowed:
        lines.append(f"    f{i} = []" if card.repeated else f"    f{i} = None")
    # b is exactly the message (end == len(b)), so a TLV header cut short makes _TL raise
    # struct.error: caught once outside the loop instead of a bounds test per parameter.
    lines.append("    pos = 5")
    prefix = _prefix_run(allowed)
    if prefix:
        # Speculation: peers (and our encoder) send the leading mandatory integers first, in
        # declaration order. One struct call reads their TLVs; when every type and length is the
        # expected one they are taken as the loop would take them and the loop starts after them,
        # otherwise the loop walks from byte 5 as usual (same rules, same errors either way).
        size = sum(TLV_HEADER_SIZE + params[i][1].fixed_size for i in prefix)
        names = [f"t{i}, n{i}, v{i}" for i in prefix]
        tests = [f"t{i} == {params[i][1].code:#06x} and n{i} == {params[i][1].fixed_size}" for i in prefix]
        lines.append(f"    if end >= {HEADER_SIZE + size}:")
        fmt = "".join("HH" + _PACK_CODE[params[i][1].kind] for i in prefix)
        lines.append(f"        {', '.join(names)} = _prefix_{fmt}(b, 5)")
        lines.append(f"        if {' and '.join(tests)}:")
        lines += [f"            f{i} = v{i}" for i in prefix]
        lines.append(f"            pos = {HEADER_SIZE + size}")
    lines += [
        "    try:",
        "    while pos < end:",
        "        t, n = _TL(b, pos)",
        "        p = pos + 4",
        "        pos = p + n",
        "        if pos > end:",
        "            raise _Invalid('parameter 0x%04x at byte %d overruns the message' % (t, p - 4),"
        " error_information=p - 4)",
    ]
    keyword = "if"
    # The prefix's parameters are tested last: after a matched prefix only a repeat of one of
    # them (an error) can still arrive.
    chain = [a for a in allowed if a[0] not in prefix] + [a for a in allowed if a[0] in prefix]
    for i, pt, card in chain:
        low, high = _length_bounds(pt, group)
        lines.append(f"        {keyword} t == {pt.code:#06x}:")
        keyword = "elif"
        if low == high:
            lines.append(f"            if n != {low}:")
        else:
            lines.append(f"            if n < {low} or n > {high}:")
        lines.append(
            f"                raise _Length('{pt.name}: parameter_length %d, expected "
            f"{low if low == high else f'{low}..{high}'}' % n, error_information={pt.code:#06x})"
        )
        value = _value_expr(pt)
        if pt.values is not None:
            lines.append(f"            v = {value}")
            lines.append(f"            if v not in _values{i}:")
            lines.append(
                f"                raise _Value('{pt.name}: value 0x%x not defined' % v,"
                f" error_information={pt.code:#06x})"
            )
            value = "v"
        elif pt.kind is Kind.BOOL:
            lines.append(f"            v = {value}")
            lines.append("            if v > 1:")
            lines.append(
                f"                raise _Value('{pt.name}: boolean 0x%x' % v, error_information={pt.code:#06x})"
            )
            value = "v == 1"
        if card.repeated:
            lines.append(f"            f{i}.append({value})")
        else:
            lines.append(f"            if f{i} is not None:")
            lines.append(
                f"                raise _Count('{pt.name} given more than once', error_information={pt.code:#06x})"
            )
            lines.append(f"            f{i} = {value}")
    lines.append("        else:")
    lines.append(
        f"            raise _Unknown('parameter_type 0x%04x not allowed in %s v%d' % (t, _NAME, version),"
        " error_information=t)"
    )
    # indent the loop (from "while" on) into the try block
    start = lines.index("    while pos < end:")
    lines[start:] = ["    " + line for line in lines[start:]]
    lines.append("    except _StructError:")
    lines.append("        raise _Invalid('truncated parameter header at byte %d' % pos, error_information=pos) from None")
    for i, pt, card in allowed:
        if card in (ONE, SOME):
            test = f"not f{i}" if card is SOME else f"f{i} is None"
            lines.append(f"    if {test}:")
            lines.append(
                f"        raise _Missing('{pt.name} missing in %s v%d' % (_NAME, version),"
                f" error_information={pt.code:#06x})"
            )
    # Build the instance through the slot descriptors: the attrs __init__ would only repeat
    # checks made above (messages declare no converters or validators), at twice the cost.
    lines.append("    m = _new(_cls)")
    lines.append("    _set_protocol_version(m, version)")
    for i, pt, card in params:
        value = "None" if card is ABSENT else f"tuple(f{i})" if card.repeated else f"f{i}"
        lines.append(f"    _set{i}(m, {value})")
    lines.append("    return m")
    return "\n".join(lines) + "\n"


def _bounds_test(low: int, high: int) -> str:
    """Condition true when length ``n`` is outside low..high (skipping what cannot happen)."""
    if low == high:
        return f"n != {low}"
    tests = ([f"n < {low}"] if low > 0 else []) + ([f"n > {high}"] if high < 0xFFFF else [])
    return " or ".join(tests) or "False"


def _encode_value_lines(i: int, pt: ParamType, var: str, group: int, indent: str) -> list[str]:
    """Lines appending parameter *pt* with value *var* to ``parts``."""
    low, high = _length_bounds(pt, group)
    out = []
    if pt.values is not None:
        out.append(f"{indent}if {var} not in _values{i}:")
        out.append(f"{indent}    raise _Local('%s: {pt.name} value %r not defined' % (_NAME, {var}))")
    if pt.kind is Kind.BOOL:
        out.append(f"{indent}if {var} not in (0, 1):")
        out.append(f"{indent}    raise _Local('%s: {pt.name} must be a boolean' % _NAME)")
        out.append(f"{indent}parts.append(_pack{i}({pt.code:#06x}, 1, 1 if {var} else 0))")
    elif pt.kind in _PACK_CODE:
        out.append(f"{indent}parts.append(_pack{i}({pt.code:#06x}, {low}, {var}))")
    elif pt.kind is Kind.BYTES:
        out.append(f"{indent}n = len({var})")
        out.append(f"{indent}if {_bounds_test(low, high)}:")
        out.append(f"{indent}    raise _Local('%s: {pt.name} length %d outside {low}..{high}' % (_NAME, n))")
        out.append(f"{indent}parts.append(_pack_tl({pt.code:#06x}, n))")
        out.append(f"{indent}parts.append(bytes({var}))")
    else:  # CP_CW_combination
        out.append(f"{indent}cp, cw = {var}")
        out.append(f"{indent}n = len(cw) + 2")
        out.append(f"{indent}if {_bounds_test(low, high)}:")
        out.append(f"{indent}    raise _Local('%s: CP_CW_combination length %d outside {low}..{high}' % (_NAME, n))")
        out.append(f"{indent}parts.append(_pack_cpcw({pt.code:#06x}, n, cp))")
        out.append(f"{indent}parts.append(bytes(cw))")
    return out


def _fixed_runs(cls: type[Message], group: int) -> list[list[int]]:
    """Indexes of consecutive mandatory integer parameters, packed with one struct call each."""
    runs: list[list[int]] = []
    current: list[int] = []
    for i, (pt, cards) in enumerate(cls.PARAMS):
        if cards[group] is ONE and pt.kind in _PACK_CODE and pt.kind is not Kind.BOOL:
            current.append(i)
            continue
        if current:
            runs.append(current)
        current = []
    if current:
        runs.append(current)
    return runs


def _prefix_run(allowed: list[tuple[int, ParamType, Card]]) -> list[int]:
    """Indexes of the leading mandatory plain integers (no value set, not boolean) among the
    parameters a decoder allows, in declaration order."""
    run: list[int] = []
    for i, pt, card in allowed:
        if card is not ONE or pt.kind not in _PACK_CODE or pt.kind is Kind.BOOL or pt.values is not None:
            break
        run.append(i)
    return run if len(run) >= 2 else []


def _run_struct(cls: type[Message], run: list[int]) -> struct.Struct:
    return struct.Struct(">" + "".join("HH" + _PACK_CODE[cls.PARAMS[i][0].kind] for i in run))


def _encoder_source(cls: type[Message], group: int) -> str:
    lines = ["def encode(m, version):", "    parts = []"]
    run_of = {run[0]: (k, run) for k, run in enumerate(_fixed_runs(cls, group))}
    skip: set[int] = set()
    for i, (pt, cards) in enumerate(cls.PARAMS):
        if i in skip:
            continue
        card = cards[group]
        var = f"m.{pt.name}"
        if i in run_of:
            # One struct call for the run; a None or out-of-range value makes struct raise,
            # and Message.encode names the culprit.
            k, run = run_of[i]
            skip.update(run)
            args = []
            for j in run:
                pj = cls.PARAMS[j][0]
                lines.append(f"    x{j} = m.{pj.name}")
                if pj.values is not None:
                    lines.append(f"    if x{j} not in _values{j}:")
                    lines.append(f"        raise _Local('%s: {pj.name} value %r not defined' % (_NAME, x{j}))")
                args.append(f"{pj.code:#06x}, {pj.fixed_size}, x{j}")
            lines.append(f"    parts.append(_run{group}_{k}({', '.join(args)}))")
        elif card is ABSENT:
            lines.append(f"    if {var} is not None and {var} != ():")
            lines.append(f"        raise _Local('%s: {pt.name} not allowed in v%d' % (_NAME, version))")
        elif card.repeated:
            lines.append(f"    items = {var}")
            if card is SOME:
                lines.append("    if not items:")
                lines.append(f"        raise _Local('%s: at least one {pt.name} needed' % _NAME)")
            lines.append("    for item in items:")
            lines += _encode_value_lines(i, pt, "item", group, "        ")
        else:
            lines.append(f"    x = {var}")
            if card is ONE:
                lines.append("    if x is None:")
                lines.append(f"        raise _Local('%s: {pt.name} is mandatory' % _NAME)")
                lines += _encode_value_lines(i, pt, "x", group, "    ")
            else:
                lines.append("    if x is not None:")
                lines += _encode_value_lines(i, pt, "x", group, "        ")
    lines += [
        "    body = b''.join(parts)",
        "    if len(body) > 0xFFFF:",
        "        raise _Local('%s: %d bytes of parameters exceed message_length' % (_NAME, len(body)))",
        f"    return _pack_header(version, {cls.MESSAGE_TYPE:#06x}, len(body)) + body",
    ]
    return "\n".join(lines) + "\n"


__all__ = [
    "ABSENT",
    "ANY",
    "Card",
    "DECODERS",
    "Deviation",
    "HEADER",
    "HEADER_SIZE",
    "MAX_MESSAGE_LENGTH",
    "MESSAGE_CLASSES",
    "Message",
    "ONE",
    "OPTIONAL",
    "PeerProtocolError",
    "SOME",
    "TLV",
    "VERSION_GROUPS",
    "generated_source",
    "message",
    "param",
]
