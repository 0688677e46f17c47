"""`tunewright chat MODEL [MESSAGE]`: talk to a model on a server, streaming its replies.

With MESSAGE, or with text piped on stdin, it sends that one message and prints the reply. On a terminal (or with
`--interactive`) it reads one message a line and keeps the conversation: each request carries every earlier turn,
`/reset` forgets them, `/exit` or end of input ends it.
"""

from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Any

from tunewright.clients.cli.remote import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    add_command,
    describe,
    error,
    given,
    print_json,
)

if TYPE_CHECKING:
    import argparse
    from typing import TextIO

    import openai

PROMPT = "> "
RESET = "/reset"
EXIT = ("/exit", "/quit")


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `chat` command."""
    parser = add_command(
        subcommands,
        "chat",
        run_chat,
        help="chat with a model on a server: one message, or a conversation on a terminal",
        description="Send MESSAGE (or what stdin holds) to MODEL and print the reply as it streams. On a terminal, "
        "or with --interactive, read one message a line and keep the conversation (/reset forgets it, /exit or "
        "end of input ends it). Exit 0, 1 when the server refuses a request, 2 on a wrong use.",
    )
    parser.add_argument("model", metavar="MODEL", help="a base, fine-tuned (ft:…) or checkpoint model")
    parser.add_argument("message", metavar="MESSAGE", nargs="?", help="one message to send (default: read stdin)")
    parser.add_argument("-i", "--interactive", action="store_true", help="a conversation even when stdin is a pipe")
    parser.add_argument("--system", metavar="TEXT", help="a system message to start with")
    parser.add_argument("--max-tokens", type=int, help="max_completion_tokens of each reply")
    parser.add_argument("--temperature", type=float, help="sampling temperature")
    parser.add_argument("--seed", type=int, help="sampling seed")
    parser.add_argument("--no-stream", action="store_true", help="print each reply when it is complete")


def run_chat(client: openai.OpenAI, args: argparse.Namespace) -> int:
    """`chat MODEL [MESSAGE]`: one exchange, or a conversation (exit 1 if any of its requests failed)."""
    interactive = args.interactive or (args.message is None and sys.stdin.isatty())
    if interactive and (args.message is not None or args.json):
        raise UsageError("--interactive reads its messages from stdin and prints text: leave out MESSAGE and --json")
    chat = Chat(client, args)
    if interactive:
        failures = chat.converse(sys.stdin, sys.stdout, prompt=sys.stdin.isatty())
        return EXIT_FAILED if failures else EXIT_OK
    message = args.message if args.message is not None else sys.stdin.read()
    if not message.strip():
        raise UsageError("nothing to send: give MESSAGE or pipe it on stdin")
    if args.json:
        print_json(chat.complete(message))
    else:
        chat.say(message, sys.stdout)
    return EXIT_OK


class Chat:
    """A conversation with one model: the messages so far and the sampling options of every request."""

    def __init__(self, client: openai.OpenAI, args: argparse.Namespace) -> None:
        """Start with the system message, if any."""
        self.client = client
        self.model = args.model
        self.stream = not args.no_stream
        self.options = given(max_completion_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
        self.start: list[dict[str, str]] = [] if args.system is None else [{"role": "system", "content": args.system}]
        self.messages = list(self.start)

    def complete(self, message: str) -> Any:
        """Send `message` in one request (not streamed); return the completion and keep its reply."""
        self.messages.append({"role": "user", "content": message})
        completion = self.client.chat.completions.create(
            model=self.model,
            messages=self.messages,  # type: ignore[arg-type]
            **self.options,
        )
        self.messages.append({"role": "assistant", "content": completion.choices[0].message.content or ""})
        return completion

    def say(self, message: str, out: TextIO) -> None:
        """Send `message`, print the reply (as it streams, unless told not to) and keep both in the conversation.

        A failed request leaves the conversation as it was.
        """
        if not self.stream:
            reply = self.complete(message).choices[0].message.content or ""
            out.write(reply + "\n")
            out.flush()
            return
        self.messages.append({"role": "user", "content": message})
        parts: list[str] = []
        try:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=self.messages,  # type: ignore[arg-type]
                stream=True,
                **self.options,
            )
            with stream:
                for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            out.write(choice.delta.content)
                            out.flush()
                            parts.append(choice.delta.content)
        except BaseException:
            self.messages.pop()
            if parts:
                out.write("\n")
            raise
        out.write("\n")
        out.flush()
        self.messages.append({"role": "assistant", "content": "".join(parts)})

    def converse(self, lines: TextIO, out: TextIO, *, prompt: bool) -> int:
        """Read one message a line from `lines` until `/exit` or their end, answering each in turn.

        A request the server refuses is reported on stderr and the conversation goes on without it.

        Returns:
            How many requests failed.
        """
        import openai

        failures = 0
        if prompt:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401 - line editing and recall for input()
        while True:
            try:
                line = input(PROMPT) if prompt else lines.readline()
            except EOFError:
                line = ""
            except KeyboardInterrupt:
                out.write("\n")
                return failures
            if not line:  # end of input
                if prompt:
                    out.write("\n")
                return failures
            text = line.strip()
            if text in EXIT:
                return failures
            if text == RESET:
                self.messages = list(self.start)
                print("(conversation reset)", file=sys.stderr)
                continue
            if text:
                try:
                    self.say(text, out)
                except KeyboardInterrupt:
                    out.write("\n(reply interrupted)\n")
                except openai.APIError as exc:
                    failures += 1
                    error("chat", describe(exc, str(self.client.base_url)))
