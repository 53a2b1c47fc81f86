import pytest

from server.kafka.serve_process import ServeProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("amqp") / "data"), "--amqp", "127.0.0.1:0")
    yield s
    s.stop()
