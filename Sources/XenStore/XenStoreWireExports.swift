/// The xs_wire types (paths, requests, replies, framing, the ring page) are part of this module's API.
@_exported import XenStoreWire
