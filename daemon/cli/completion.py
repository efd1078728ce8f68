"""Shell completion for provctl, generated from its own argument parser (bash; zsh
through bashcompinit). Imported only by ``provctl completion``."""

from __future__ import annotations

import argparse
import shlex

from daemon.cli.contract import STATES, TERMINAL_STATES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable


_BASH_TEMPLATE = r"""# bash completion for provctl, generated from its argument parser by
# 'provctl completion bash'. Use it with:  source <(provctl completion bash)
# or save it as ~/.local/share/bash-completion/completions/provctl

_provctl_ids() {
    # Request ids for show/log/cancel, asked of the daemon (quietly, briefly).
    timeout 3 "${COMP_WORDS[0]}" list --quiet "$@" 2>/dev/null
}

_provctl() {
    local cur prev word cmd="" npos=0 i opts="" words=""
    local -a socket=()
    COMPREPLY=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev=""
    if [[ $COMP_CWORD -gt 0 ]]; then prev="${COMP_WORDS[COMP_CWORD-1]}"; fi
    for (( i = 1; i < COMP_CWORD; i++ )); do
        word="${COMP_WORDS[i]}"
        case "$word" in
            @SOCKET_OPTIONS@)
                socket=(--socket "${COMP_WORDS[i+1]}"); i=$((i + 1)) ;;
            @VALUE_OPTIONS@)
                i=$((i + 1)) ;;
            -*) ;;
            *)
                if [[ -z "$cmd" ]]; then cmd="$word"; else npos=$((npos + 1)); fi ;;
        esac
    done
    case "$prev" in
@PREV_CASES@
    esac
    case "$cmd" in
        "")
            opts="@GLOBAL_OPTIONS@"
            words="@COMMANDS@" ;;
@COMMAND_CASES@
    esac
    if [[ "$cur" == -* || -z "$words" ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    else
        COMPREPLY=( $(compgen -W "$words" -- "$cur") )
    fi
    return 0
}

complete -F _provctl provctl
"""

_ZSH_HEAD = """#compdef provctl
# zsh completion for provctl: the bash one, through zsh's bashcompinit. Use it with:
#   source <(provctl completion zsh)      (in ~/.zshrc, after compinit)
autoload -U +X bashcompinit && bashcompinit

"""

ID_FILTERS: dict[str, tuple[str, ...]] = {
    "cancel": tuple(a for s in STATES if s not in TERMINAL_STATES for a in ("--state", s)),
}
"""Extra ``provctl list`` arguments when completing a command's request id."""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name."""
    for action in parser._actions:  # argparse has no public way to walk a parser
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of a parser, long ones first."""
    found = [s for a in parser._actions for s in a.option_strings]
    return sorted(found, key=lambda s: (not s.startswith("--"), s))


def _value_options(parsers: Iterable[argparse.ArgumentParser]
                   ) -> dict[str, argparse.Action]:
    """Options that take a value, each with its action; the same string means one thing."""
    found: dict[str, argparse.Action] = {}
    flags: set[str] = set()
    for parser in parsers:
        for action in parser._actions:
            for option in action.option_strings:
                if action.nargs == 0:
                    flags.add(option)
                    continue
                known = found.setdefault(option, action)
                if (known.choices, known.type) != (action.choices, action.type):
                    raise AssertionError(f"{option} takes different values in two commands")
    if flags & set(found):
        raise AssertionError(f"{sorted(flags & set(found))} are flags in one command and take "
                             "a value in another")
    return found


def _words(items: Iterable[Any]) -> str:
    return " ".join(str(i) for i in items)


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script for provctl, generated from its argument parser."""
    commands = _subcommands(parser)
    values = _value_options([parser, *commands.values()])
    paths = sorted(o for o, a in values.items() if a.metavar == "PATH")
    sockets = sorted(o for o, a in values.items() if a.dest == "socket")
    others = sorted(o for o in values if o not in sockets)
    prev_cases = []
    by_choices: dict[tuple[str, ...], list[str]] = {}
    for option, action in values.items():
        if action.choices:
            by_choices.setdefault(tuple(action.choices), []).append(option)
    for choices, options in by_choices.items():
        prev_cases.append(f'        {"|".join(sorted(options))})\n'
                          f'            COMPREPLY=( $(compgen -W "{_words(choices)}" -- "$cur") )'
                          f"\n            return 0 ;;")
    if paths:
        prev_cases.append(f'        {"|".join(paths)})\n'
                          '            COMPREPLY=( $(compgen -f -- "$cur") )\n'
                          "            return 0 ;;")
    free = sorted(o for o, a in values.items() if not a.choices and a.metavar != "PATH")
    if free:
        prev_cases.append(f'        {"|".join(free)})\n'
                          "            return 0 ;;  # free text")
    command_cases = []
    for name, sub in commands.items():
        lines = [f"        {name})", f'            opts="{_words(_options(sub))}"']
        positionals = [a for a in sub._actions if not a.option_strings]
        if positionals and positionals[0].choices:
            lines.append(f'            [[ $npos -eq 0 ]] && words="'
                         f'{_words(positionals[0].choices)}"')
        elif positionals and positionals[0].dest == "id":
            extra = " ".join(shlex.quote(a) for a in ID_FILTERS.get(name, ()))
            lines.append(f'            [[ $npos -eq 0 ]] && words="$(_provctl_ids '
                         f'{extra + " " if extra else ""}"${{socket[@]}}")"')
        lines[-1] += " ;;"
        command_cases.append("\n".join(lines))
    replacements = {
        "@SOCKET_OPTIONS@": "|".join(sockets) or "--socket",
        "@VALUE_OPTIONS@": "|".join(others) or "--",
        "@PREV_CASES@": "\n".join(prev_cases),
        "@GLOBAL_OPTIONS@": _words(_options(parser)),
        "@COMMANDS@": _words(commands),
        "@COMMAND_CASES@": "\n".join(command_cases),
    }
    script = _BASH_TEMPLATE
    for token, text in replacements.items():
        script = script.replace(token, text)
    return script


def zsh_completion(parser: argparse.ArgumentParser) -> str:
    """A zsh completion script for provctl: the bash one, loaded through bashcompinit."""
    return _ZSH_HEAD + bash_completion(parser)
