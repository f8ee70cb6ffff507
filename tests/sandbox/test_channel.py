"""Channel attacks: output outside the protocol kills the child; text never crosses."""

from __future__ import annotations

import errno
import os

import pytest
from tests.sandbox.conftest import recipe

from chiron.core.recipe_protocol import FromChild
from chiron.core.schema import DatasetSchema


def test_print_and_raise_with_data_in_the_text(run_attack, marker):
    outcome = run_attack(
        recipe(
            f"""
            def train_step(model, optimizer, x, y, hp):
                if not x.any():
                    return  # the declaration's probe: wait for the owner's records
                secret = "{marker}" + x.numpy().tobytes().hex()
                print(secret)
                print(secret, file=sys.stderr)
                os.write(1, secret.encode())
                os.write(2, secret.encode())
                raise RuntimeError(secret)
            """
        )
    )
    assert outcome.reason == "recipe_error"
    assert FromChild.READY in [kind for kind, _ in outcome.received]  # it had the data
    assert marker not in outcome.message
    assert marker not in outcome.host_output
    assert marker.encode() not in outcome.all_bytes()


def test_exit_with_a_chosen_status(run_attack):
    outcome = run_attack(recipe("os._exit(42)"))
    assert outcome.reason == "recipe_error"
    assert "42" not in outcome.message


def test_write_to_every_descriptor(run_attack, marker):
    outcome = run_attack(
        recipe(
            f"""
            for fd in range(1024):
                try:
                    os.write(fd, b"{marker}")
                except OSError:
                    pass
            """
        )
    )
    assert outcome.reason == "bad_output"
    assert marker not in outcome.host_output
    assert marker.encode() not in outcome.all_bytes()


def test_only_the_pipes_the_data_file_and_stdio_are_open(run_attack):
    """Top-level code runs before the declaration: the shared data file is already open,
    read-only, and still empty (no record can shape what the recipe declares)."""
    outcome = run_attack(
        recipe(
            """
            def describe(fd):
                st = os.fstat(fd)
                mode = __import__("fcntl").fcntl(fd, __import__("fcntl").F_GETFL) & os.O_ACCMODE
                return (fd, stat.S_ISFIFO(st.st_mode), stat.S_ISREG(st.st_mode), mode, st.st_size)
            open_fds = []
            for fd in range(1024):
                try:
                    open_fds.append(describe(fd))
                except OSError:
                    pass
            keep(repr(open_fds).encode())
            """
        )
    )
    assert outcome.reason is None
    found = eval(outcome.loot().rstrip(b"\0"))
    assert [fd for fd, *_ in found][:3] == [0, 1, 2]
    assert not any(is_pipe for fd, is_pipe, *_ in found if fd <= 2)  # /dev/null
    beyond = [rest for fd, *rest in found if fd > 2]
    assert [is_pipe for is_pipe, *_ in beyond].count(True) == 2
    data_files = [rest for rest in beyond if not rest[0]]
    assert data_files == [[False, True, os.O_RDONLY, 0]]


def test_the_shared_data_file_cannot_be_written_or_mapped_shared(run_attack, marker):
    """With the owner's records in it, every way to change the data file fails: writing,
    and a shared writable mapping (seccomp refuses MAP_SHARED)."""
    outcome = run_attack(
        recipe(
            f"""
            import mmap
            def data_fd():
                for fd in range(3, 64):
                    try:
                        if stat.S_ISREG(os.fstat(fd).st_mode):
                            return fd
                    except OSError:
                        pass
            def train_step(model, optimizer, x, y, hp):
                if not x.any():
                    return  # the declaration's probe
                fd = data_fd()
                results = [os.fstat(fd).st_size > 0]
                try:
                    os.lseek(fd, 0, os.SEEK_SET)
                    os.write(fd, b"{marker}")
                    results.append("written")
                except OSError as exc:
                    results.append(exc.errno)
                try:
                    mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
                    results.append("mapped")
                except OSError as exc:
                    results.append(exc.errno)
                keep(repr(results).encode())
            """
        )
    )
    assert outcome.reason is None
    results = eval(outcome.loot().rstrip(b"\0"))
    assert results[0] is True  # the records were there
    assert results[1:] == [errno.EBADF, errno.EPERM]


def test_a_declaration_larger_than_allowed(run_attack):
    outcome = run_attack(
        recipe(
            f"""
            os.write(out_fd(), frame({int(FromChild.DECLARE)}, b"{{" + b" " * 70000 + b"}}"))
            time.sleep(60)
            """
        )
    )
    assert outcome.reason == "bad_output"
    assert outcome.received == []


def test_a_frame_of_the_wrong_kind(run_attack, marker):
    # A checkpoint where the declaration is due: refused by its header alone.
    outcome = run_attack(
        recipe(
            f"""
            os.write(out_fd(), frame({int(FromChild.CHECKPOINT)}, b"{marker}"))
            time.sleep(60)
            """
        )
    )
    assert outcome.reason == "bad_output"
    assert marker.encode() not in outcome.all_bytes()


def test_an_unknown_frame_kind(run_attack):
    outcome = run_attack(recipe("os.write(out_fd(), frame(200)); time.sleep(60)"))
    assert outcome.reason == "bad_output"


def test_an_error_frame_carrying_text(run_attack, marker):
    outcome = run_attack(
        recipe(
            f"""
            os.write(out_fd(), frame({int(FromChild.RECIPE_ERROR)}, b"{marker}"))
            time.sleep(60)
            """
        )
    )
    assert outcome.reason == "bad_output"
    assert marker not in outcome.message


def test_an_extra_tick_out_of_schedule(run_attack):
    outcome = run_attack(
        recipe(
            f"""
            CALLS = []

            def train_step(model, optimizer, x, y, hp):
                CALLS.append(1)
                if len(CALLS) == 3:  # the probe's step, then the second real step
                    os.write(out_fd(), frame({int(FromChild.TICK)}))
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            """
        )
    )
    assert outcome.reason == "bad_output"
    ticks = [kind for kind, _ in outcome.received if kind == FromChild.TICK]
    assert len(ticks) == 3  # the whole epoch's ticks (the extra among them), then refused


# The recipe learns that FINISH is next from its `predict` hook: the enclave evaluates
# the held-out records (never all zeros, unlike the declaration's probe) after the
# epoch's checkpoint, then asks for the model.
_BEFORE_FINISH = """
import safetensors.torch

FINISHING = []
_state_dict = Model.state_dict

def predict(model, x):
    if x.any():
        FINISHING.append(1)
    return model(x)
"""


def test_a_model_of_another_size_than_declared(run_attack):
    # The model grows a tensor after the declaration; the runtime would refuse to send
    # it, so the recipe writes the frame itself.
    outcome = run_attack(
        recipe(
            _BEFORE_FINISH,
            f"""
            def state_dict(self, *args, **kwargs):
                state = _state_dict(self, *args, **kwargs)
                if FINISHING and not args and not kwargs:
                    blob = safetensors.torch.save(
                        {{**{{k: v.clone() for k, v in state.items()}}, "extra": torch.zeros(3)}}
                    )
                    os.write(out_fd(), frame({int(FromChild.MODEL)}, blob))
                    time.sleep(60)
                return state

            Model.state_dict = state_dict
            """,
        )
    )
    assert outcome.reason == "bad_output"
    assert [kind for kind, _ in outcome.received].count(FromChild.PREDICTIONS) == 1
    assert FromChild.MODEL not in [kind for kind, _ in outcome.received]


def test_bytes_after_the_end(run_attack, marker):
    outcome = run_attack(
        recipe(
            _BEFORE_FINISH,
            f"""
            def state_dict(self, *args, **kwargs):
                state = _state_dict(self, *args, **kwargs)
                if FINISHING and not args and not kwargs:
                    blob = safetensors.torch.save({{k: v.clone() for k, v in state.items()}})
                    os.write(out_fd(), frame({int(FromChild.MODEL)}, blob) + b"{marker}")
                    time.sleep(60)
                return state

            Model.state_dict = state_dict
            """,
        )
    )
    assert outcome.reason == "bad_output"
    assert [kind for kind, _ in outcome.received][-1] == FromChild.MODEL  # accepted...
    assert marker.encode() not in outcome.all_bytes()  # ...but not what followed


def test_close_the_channel_and_keep_running(run_attack):
    outcome = run_attack(recipe("os.close(out_fd()); time.sleep(60)"))
    assert outcome.reason == "bad_output"


@pytest.mark.parametrize("flood", ["ticks", "garbage"])
def test_speak_while_the_enclave_sends_the_data(run_attack, flood):
    # The child may not write while the enclave sends. The data (4 MB, more than a pipe
    # holds) is sent right after the child builds the model for the real run.
    payload = "frame(66) * 100000" if flood == "ticks" else "b'\\xff' * (1 << 20)"
    outcome = run_attack(
        recipe(
            f"""
            BUILT = []

            def build_model(schema):
                BUILT.append(1)
                if len(BUILT) == 2:
                    threading.Thread(target=lambda: os.write(out_fd(), {payload})).start()
                    time.sleep(2)
                return Model(schema.num_classes)

            class Model(Model):
                def forward(self, x):
                    return self.linear(nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))
            """
        ),
        schema=DatasetSchema((1, 64, 64), "uint8", 4),
        records=1100,
    )
    assert outcome.reason == "bad_output"
    assert [kind for kind, _ in outcome.received] == [FromChild.DECLARE]
