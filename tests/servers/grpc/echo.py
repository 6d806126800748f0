"""A gRPC server and client on grpcio (gRPC's C core), for tests/grpc.rs.

    python echo.py serve CERT KEY   # TLS on 127.0.0.1, a free port; prints the port, then serves
    python echo.py call TARGET      # calls every method through TARGET (plaintext HTTP/2); prints JSON
    python echo.py call TARGET CA   # the same over TLS, trusting only the PEM file CA (with
                                    # grpc_proxy=http://HOST:PORT set, through that proxy's CONNECT)

The service `echo.Echo` takes and gives raw bytes (no generated code):
  Say     unary: answers what it got, with the `authorization` metadata it was sent
  Fail    unary: fails with PERMISSION_DENIED "nope" (a trailers-only answer)
  Unauth  unary: fails with UNAUTHENTICATED "token rejected" (as a server refusing the credential)
  Stream  server streaming: three messages, then the trailing metadata x-done: yes
  Chat    bidirectional: each message back upper-cased, as it comes
"""
import json
import sys
from concurrent import futures

import grpc


def ident(b):
    return b


def serve(cert, key):
    def say(request, context):
        metadata = dict(context.invocation_metadata())
        return json.dumps({"authorization": metadata.get("authorization"), "body": request.decode()}).encode()

    def fail(request, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "nope")

    def unauth(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "token rejected")

    def stream(request, context):
        for i in range(3):
            yield b"part%d" % i
        context.set_trailing_metadata((("x-done", "yes"),))

    def chat(requests, context):
        for r in requests:
            yield r.upper()

    handler = grpc.method_handlers_generic_handler("echo.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(say, ident, ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, ident, ident),
        "Unauth": grpc.unary_unary_rpc_method_handler(unauth, ident, ident),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, ident, ident),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    with open(key, "rb") as k, open(cert, "rb") as c:
        credentials = grpc.ssl_server_credentials([(k.read(), c.read())])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(target, ca=None):
    out = {}
    if ca is None:
        channel = grpc.insecure_channel(target)
    else:
        with open(ca, "rb") as f:
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=f.read()))
    with channel:
        def outcome(name, f):
            try:
                out[name] = {"ok": f()}
            except grpc.RpcError as e:
                out[name] = {"code": e.code().name, "details": e.details()}

        say = channel.unary_unary("/echo.Echo/Say", ident, ident)
        outcome("say", lambda: json.loads(say(b"hello", timeout=10)))
        fail = channel.unary_unary("/echo.Echo/Fail", ident, ident)
        outcome("fail", lambda: fail(b"x", timeout=10).decode())
        unauth = channel.unary_unary("/echo.Echo/Unauth", ident, ident)
        outcome("unauth", lambda: unauth(b"x", timeout=10).decode())

        def streamed():
            c = channel.unary_stream("/echo.Echo/Stream", ident, ident)(b"x", timeout=10)
            messages = [m.decode() for m in c]
            return {"messages": messages, "trailers": dict(c.trailing_metadata())}

        outcome("stream", streamed)
        chat = channel.stream_stream("/echo.Echo/Chat", ident, ident)
        outcome("chat", lambda: [m.decode() for m in chat(iter([b"one", b"two", b"three"]), timeout=10)])
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 4:
        serve(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["call"] and len(sys.argv) in (3, 4):
        call(*sys.argv[2:])
    else:
        sys.exit(__doc__)
