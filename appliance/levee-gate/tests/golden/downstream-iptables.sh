#!/bin/sh
# Levee downstream guard: only the Levee appliance may reach this mail server's
# TCP port 25, so senders who ignore the MX cannot bypass the filter.
# Run as root. Re-running refills the LEVEE_DOWNSTREAM chain and adds the jump only once.
set -e

iptables -N LEVEE_DOWNSTREAM 2>/dev/null || iptables -F LEVEE_DOWNSTREAM
iptables -A LEVEE_DOWNSTREAM -i lo -j RETURN
iptables -A LEVEE_DOWNSTREAM -s 192.0.2.25 -j RETURN
iptables -A LEVEE_DOWNSTREAM -j DROP
iptables -C INPUT -p tcp --dport 25 -j LEVEE_DOWNSTREAM 2>/dev/null || iptables -I INPUT 1 -p tcp --dport 25 -j LEVEE_DOWNSTREAM

ip6tables -N LEVEE_DOWNSTREAM 2>/dev/null || ip6tables -F LEVEE_DOWNSTREAM
ip6tables -A LEVEE_DOWNSTREAM -i lo -j RETURN
ip6tables -A LEVEE_DOWNSTREAM -s 2001:db8::25 -j RETURN
ip6tables -A LEVEE_DOWNSTREAM -j DROP
ip6tables -C INPUT -p tcp --dport 25 -j LEVEE_DOWNSTREAM 2>/dev/null || ip6tables -I INPUT 1 -p tcp --dport 25 -j LEVEE_DOWNSTREAM
