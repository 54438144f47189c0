"""Reading tshark's JSON output in the Wireshark cross-checks."""

WARNING = 0x600000  # Wireshark expert severities: chat 0x200000, note 0x400000, warn 0x600000, error 0x800000


def problems(node, path: str = "$") -> list[str]:
    """Malformed-packet markers and expert infos of warning severity or worse, anywhere in *node*."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_ws.malformed":
                found.append(f"{path}: malformed")
            if key == "_ws.expert.severity" and int(value) >= WARNING:
                found.append(f"{path}: {node.get('_ws.expert.message')}")
            found += problems(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += problems(value, f"{path}[{index}]")
    return found
