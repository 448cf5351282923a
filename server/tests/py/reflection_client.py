"""A generic gRPC client that knows nothing of aside's protos: it learns them from
the server's reflection service (grpcio-reflection's descriptor database speaks
grpc.reflection.v1alpha), lists the services, and calls Inference/Embed.

Usage: reflection_client.py HOST:PORT TEXT...   (prints one JSON object)
"""

import json
import sys

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> None:
    addr, texts = sys.argv[1], sys.argv[2:]
    with grpc.insecure_channel(addr) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        pool = DescriptorPool(db)
        method = pool.FindServiceByName("aside.v1.Inference").FindMethodByName("Embed")
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        embed = channel.unary_unary(
            "/aside.v1.Inference/Embed",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        answer = embed(request_type(inputs=texts), timeout=60)
        fields = sorted(f.name for f in method.input_type.fields)
        print(
            json.dumps(
                {
                    "services": services,
                    "embed_request_fields": fields,
                    "embeddings": [list(e.values) for e in answer.embeddings],
                }
            )
        )


if __name__ == "__main__":
    main()
