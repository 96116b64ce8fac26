//! Networking: the `NetBackend` trait that NIC models move whole Ethernet frames
//! through, the user-mode NAT (ARP, DHCP, DNS forwarding, TCP/UDP/ICMP to host
//! sockets, port forwards), the hub between VMs and the pcap writer.
