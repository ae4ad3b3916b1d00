"""KV page transports between a prefill and a decode worker: one interface (transport.py), a
receiving side shared by all (inbox.py), grpc, cuda_ipc (same node, GPU to GPU) and local
implementations, chosen by locality in factory.py."""

from services.kvtransfer.factory import TRANSPORTS, AutoKVSender, KVTransports
from services.kvtransfer.grpc_receiver import KVTransferServer, KVTransferService
from services.kvtransfer.grpc_sender import channel_options
from services.kvtransfer.inbox import KVReceiver, PageInbox
from services.kvtransfer.local_transport import LocalEndpoints
from services.kvtransfer.pages import PageLayout, PageRun
from services.kvtransfer.transport import KVSender, TransferConfig, TransferReceipt

__all__ = ["TRANSPORTS", "AutoKVSender", "KVReceiver", "KVSender", "KVTransferServer", "KVTransferService", "KVTransports",
           "LocalEndpoints", "PageInbox", "PageLayout", "PageRun", "TransferConfig",
           "TransferReceipt", "channel_options"]
