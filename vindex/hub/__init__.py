"""The Hugging Face Hub round trip: publish vindexes as dataset repos, pull them, list them.

    from vindex.hub import publish, pull, ls, HubLocation
    publish("lake/smollm2", "my-org/smollm2-vindex")            # upload what changed, card included
    pull("hf://datasets/my-org/smollm2-vindex", tables=["pooled"], layers=[3, 4])
    ls(org="my-org")                                            # the local cache and the org's vindexes

location.py (the one hf:// grammar, at the bottom), remote.py (Hub calls, remote manifests, the
pull cache, `ls`), upload.py (publish), download.py (pull), card.py (the dataset card). Query a repo in place with
`vindex.query.connect("hf://datasets/...")`.
"""
from .location import HubLocation
from .upload import PublishResult, publish
from .download import PullResult, pull
from .remote import RemoteVindex, find_remote_vindexes, ls

__all__ = ["HubLocation", "publish", "PublishResult", "pull", "PullResult", "ls", "find_remote_vindexes",
           "RemoteVindex"]
